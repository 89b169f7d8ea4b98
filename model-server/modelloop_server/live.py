"""Live sketches of what this process served: counts of the request features over the reference's bins
and of the predictions over the prediction reference's bins (docs/contracts.md, "Sketch format").

Counts are cumulative since the process started; the snapshot carries `instance` (random, fixed for the
life of the process), `started` and `modelVersion`, so a reader can tell a restart from a window.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from modelloop.drift.sketch import LiveSketch

from .model import ServedModel
from .schema import Rows


class LiveSketches:
    def __init__(self, model: ServedModel) -> None:
        self.model_version = model.version
        self.target = model.target
        self.names = model.schema.names
        self.features = LiveSketch(model.metadata["reference"])
        self.instance, self.started = self.features.instance, self.features.started
        reference = model.metadata.get("predictionReference")
        self.predictions = LiveSketch(reference) if reference else None
        if self.predictions is not None:  # one process, one identity
            self.predictions.instance, self.predictions.started = self.instance, self.started

    def observe(self, rows: Rows, predictions: np.ndarray) -> None:
        if isinstance(rows, np.ndarray):  # by name: the matrix is in schema order, the sketch in its own
            rows = {name: rows[:, j] for j, name in enumerate(self.names)}
        self.features.observe_columns(rows)
        if self.predictions is not None:
            self.predictions.observe_columns({self.target: predictions})

    def snapshot(self) -> dict[str, Any]:
        """The feature sketch plus the prediction sketch under `predictions`, both with modelVersion."""
        out = self.features.snapshot(modelVersion=self.model_version)
        if self.predictions is not None:
            out["predictions"] = self.predictions.snapshot(modelVersion=self.model_version)
        return out
