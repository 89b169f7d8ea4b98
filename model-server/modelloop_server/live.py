"""Live sketches of what this process served: counts of the request features over the reference's bins
and of the predictions over the prediction reference's bins (docs/contracts.md, "Sketch format").

Counts are cumulative since the process started; the snapshot carries `instance` (random, fixed for the
life of the process), `started` and `modelVersion` so a reader can tell a restart from a window.
"""
from __future__ import annotations

import threading
import uuid
from datetime import datetime, timezone
from typing import Any

import numpy as np
from modelloop.drift.sketch import LiveSketch

from .model import ServedModel
from .schema import Rows


class LiveSketches:
    def __init__(self, model: ServedModel, *, instance: str | None = None, started: datetime | None = None) -> None:
        self.instance = instance or uuid.uuid4().hex
        self.started = (started or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.model_version = model.version
        self.target = model.target
        self.features = LiveSketch(model.metadata["reference"])
        reference = model.metadata.get("predictionReference")
        self.predictions = LiveSketch(reference) if reference else None
        # Observed on the worker thread, read by the event loop: a snapshot must not see half a batch.
        self._lock = threading.Lock()

    def observe(self, rows: Rows, predictions: np.ndarray) -> None:
        with self._lock:
            if isinstance(rows, np.ndarray):
                self.features.observe_rows(rows)
            else:
                self.features.observe_columns(rows)
            if self.predictions is not None:
                self.predictions.observe_columns({self.target: predictions})

    def snapshot(self) -> dict[str, Any]:
        """The feature sketch with instance, started and modelVersion; the prediction sketch under
        `predictions` (same fields)."""
        extra = {"instance": self.instance, "started": self.started, "modelVersion": self.model_version}
        with self._lock:
            out = self.features.snapshot(**extra)
            if self.predictions is not None:
                out["predictions"] = self.predictions.snapshot(**extra)
        return out
