"""Live sketches of what this process served: counts of the request features over the reference's bins
and of the predictions over the prediction reference's bins (docs/contracts.md, "Sketch format").

Counts are cumulative since the process started; the snapshot carries `instance` (random, fixed for the
life of the process), `started` and `modelVersion`, so a reader can tell a restart from a window.

Counting a batch costs about 20 us per feature whatever its size, more than predicting a small model,
so batches are buffered and counted together once `FLUSH_ROWS` rows are waiting, and before every
snapshot: a snapshot always includes every row answered before it was asked for.

Privacy: two snapshots differ by at least `min_rows` rows (MODELLOOP_SKETCH_MIN_ROWS, docs/security.md).
A new snapshot is published only once that many rows were counted since the last published one;
until then the last published one (at first, the empty sketch) is served again. So no reader, however
often it polls, can isolate the bins of fewer than `min_rows` requests' rows.
"""
from __future__ import annotations

import threading
from typing import Any

import numpy as np
from modelloop.drift.sketch import LiveSketch

from .model import ServedModel
from .schema import Rows

FLUSH_ROWS = 1024
DEFAULT_MIN_ROWS = 100


class LiveSketches:
    def __init__(self, model: ServedModel, *, min_rows: int = DEFAULT_MIN_ROWS) -> None:
        if min_rows < 1:
            raise ValueError(f"min_rows {min_rows} must be at least 1")
        self.min_rows = min_rows
        self.model_version = model.version
        self.target = model.target
        self.schema = model.schema
        self.features = LiveSketch(model.metadata["reference"])
        self.instance, self.started = self.features.instance, self.features.started
        reference = model.metadata.get("predictionReference")
        self.predictions = LiveSketch(reference) if reference else None
        if self.predictions is not None:  # one process, one identity
            self.predictions.instance, self.predictions.started = self.instance, self.started
        self._rows: list[Rows] = []
        self._predicted: list[np.ndarray] = []
        self._buffered = 0
        self._lock = threading.Lock()
        self._published = self._build()

    def observe(self, rows: Rows, predictions: np.ndarray) -> None:
        with self._lock:
            self._rows.append(rows)
            self._predicted.append(predictions)
            self._buffered += len(predictions)
            if self._buffered >= FLUSH_ROWS:
                self._flush()

    def snapshot(self) -> dict[str, Any]:
        """The feature sketch plus the prediction sketch under `predictions`, both with modelVersion: the
        current counts when at least `min_rows` rows arrived since the last published snapshot, that
        snapshot again otherwise."""
        with self._lock:
            self._flush()
            if self.features.rows - self._published["rows"] >= self.min_rows:
                self._published = self._build()
            return self._published

    def _build(self) -> dict[str, Any]:
        out = self.features.snapshot(modelVersion=self.model_version)
        if self.predictions is not None:
            out["predictions"] = self.predictions.snapshot(modelVersion=self.model_version)
        return out

    def _flush(self) -> None:
        if not self._rows:
            return
        rows = self.schema.merge(self._rows)
        predictions = np.concatenate(self._predicted) if len(self._predicted) > 1 else self._predicted[0]
        self._rows, self._predicted, self._buffered = [], [], 0
        if isinstance(rows, np.ndarray):  # by name: the matrix is in schema order, the sketch in its own
            rows = {name: rows[:, j] for j, name in enumerate(self.schema.names)}
        self.features.observe_columns(rows)
        if self.predictions is not None:
            self.predictions.observe_columns({self.target: predictions})
