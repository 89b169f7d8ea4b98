"""One prediction call for a batch of requests, on the worker thread: merge their rows, predict, count
rows and predictions in the live sketches and the metrics, and cut each request its slice. Counting
comes before answering (it is cheap: the sketches buffer), so a sketch or /metrics read after a
response includes it.

A batch that fails is retried request by request, so one request's bad rows (say NaN for a model that
rejects NaN) fail only that request.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .batching import Job
from .errors import ClientError
from .live import LiveSketches
from .metrics import ServerMetrics
from .model import ServedModel
from .recording import PredictionRecorder
from .schema import Rows

log = logging.getLogger("modelloop.server")


@dataclass
class Prediction:
    predictions: np.ndarray
    probabilities: np.ndarray | None


class Predictor:
    def __init__(self, model: ServedModel, metrics: ServerMetrics, sketches: LiveSketches | None,
                 recorder: PredictionRecorder | None = None) -> None:
        self.model = model
        self.metrics = metrics
        self.sketches = sketches
        self.recorder = recorder
        # A record keeps a classifier's confidence (live roc_auc and the label-free estimate need it). onnxruntime
        # computes it in the same run as the label; scikit-learn would need a second pass (predict_proba after
        # predict, doubling a forest's cost), so there it is recorded only when the client asked for it.
        self.always_proba = recorder is not None and model.classifier and model.runtime == "onnx"

    def run(self, jobs: Sequence[Job]) -> list[Any]:
        started = time.perf_counter()
        rows = self.model.schema.merge([job.rows for job in jobs])
        try:
            predictions, probabilities = self.model.predict(
                rows, proba=self.always_proba or any(job.proba for job in jobs))
        except Exception as exc:  # noqa: BLE001 - isolated below, then reported per request
            return [_as_request_error(exc)] if len(jobs) == 1 else self._run_one_by_one(jobs, started)
        self._sketch(rows, predictions)
        self._record(jobs, rows, predictions, probabilities)
        self._count([predictions], job_count=len(jobs), started=started)
        results: list[Any] = []
        start = 0
        for job in jobs:
            end = start + job.count
            results.append(Prediction(predictions[start:end],
                                      probabilities[start:end] if job.proba and probabilities is not None else None))
            start = end
        return results

    def _run_one_by_one(self, jobs: Sequence[Job], started: float) -> list[Any]:
        results: list[Any] = []
        answered: list[np.ndarray] = []
        for job in jobs:
            try:
                predictions, probabilities = self.model.predict(job.rows, proba=self.always_proba or job.proba)
            except Exception as exc:  # noqa: BLE001
                results.append(_as_request_error(exc))
                continue
            self._sketch(job.rows, predictions)
            self._record([job], job.rows, predictions, probabilities)
            results.append(Prediction(predictions, probabilities if job.proba else None))
            answered.append(predictions)
        self._count(answered, job_count=len(jobs), started=started)
        return results

    def _sketch(self, rows: Rows, predictions: np.ndarray) -> None:
        if self.sketches is None:
            return
        try:
            self.sketches.observe(rows, predictions)
        except Exception:  # noqa: BLE001 - drift bookkeeping must never fail a prediction
            log.exception("sketch.observe-failed")

    def _record(self, jobs: Sequence[Job], rows: Rows, predictions: np.ndarray,
                probabilities: np.ndarray | None) -> None:
        if self.recorder is None:
            return
        try:
            if len(jobs) == 1:  # the usual batch at low concurrency: tuples of one (cheaper to make and free)
                ids, counts = (jobs[0].request_id,), (jobs[0].count,)
            else:
                ids, counts = [job.request_id for job in jobs], [job.count for job in jobs]
            self.recorder.record(ids, counts, predictions, probabilities, rows)
        except Exception:  # noqa: BLE001 - like the sketches: bookkeeping never fails a prediction
            log.exception("records.record-failed")

    def _count(self, predictions: list[np.ndarray], *, job_count: int, started: float) -> None:
        merged = np.concatenate(predictions) if len(predictions) > 1 else predictions[0] if predictions else None
        rows = 0 if merged is None else len(merged)
        self.metrics.observe_batch(rows, job_count, time.perf_counter() - started, merged)


def _as_request_error(exc: Exception) -> Exception:
    """What the estimator rejects in well-formed rows (NaN, values it cannot handle) is the request's
    problem: 422 with the estimator's message. Anything else stays an internal error."""
    if isinstance(exc, (ValueError, TypeError)):
        return ClientError(422, f"the model cannot predict these rows: {type(exc).__name__}: {exc}")
    return exc
