"""One prediction call for a batch of requests, on the worker thread: merge their rows, predict, hand
each request its slice, then (outside the requests' latency) count the rows in the live sketches and
the predictions in the metrics.

A batch that fails is retried request by request, so one request's bad rows (say NaN for a model that
rejects NaN) fail only that request.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .batching import Deliver, Job
from .errors import ClientError
from .live import LiveSketches
from .metrics import ServerMetrics
from .model import ServedModel
from .schema import Rows


@dataclass
class Prediction:
    predictions: np.ndarray
    probabilities: np.ndarray | None


class Predictor:
    def __init__(self, model: ServedModel, metrics: ServerMetrics, sketches: LiveSketches | None) -> None:
        self.model = model
        self.metrics = metrics
        self.sketches = sketches

    def run(self, jobs: Sequence[Job], deliver: Deliver) -> None:
        started = time.perf_counter()
        rows = self.model.schema.merge([job.rows for job in jobs])
        try:
            predictions, probabilities = self.model.predict(rows, proba=any(job.proba for job in jobs))
        except Exception as exc:  # noqa: BLE001 - isolated below, then reported per request
            if len(jobs) == 1:
                deliver([_as_request_error(exc)])
                return
            self._run_one_by_one(jobs, deliver, started)
            return
        results: list[Any] = []
        start = 0
        for job in jobs:
            end = start + job.count
            results.append(Prediction(predictions[start:end],
                                      probabilities[start:end] if job.proba and probabilities is not None else None))
            start = end
        deliver(results)
        self._observe([(rows, predictions)], len(jobs), time.perf_counter() - started)

    def _run_one_by_one(self, jobs: Sequence[Job], deliver: Deliver, started: float) -> None:
        results: list[Any] = []
        done: list[tuple[Rows, np.ndarray]] = []
        for job in jobs:
            try:
                predictions, probabilities = self.model.predict(job.rows, proba=job.proba)
            except Exception as exc:  # noqa: BLE001
                results.append(_as_request_error(exc))
                continue
            results.append(Prediction(predictions, probabilities))
            done.append((job.rows, predictions))
        deliver(results)
        self._observe(done, len(jobs), time.perf_counter() - started)

    def _observe(self, done: list[tuple[Rows, np.ndarray]], requests: int, seconds: float) -> None:
        count = sum(self.model.schema.count(rows) for rows, _ in done)
        merged = np.concatenate([p for _, p in done]) if len(done) > 1 else done[0][1] if done else None
        self.metrics.observe_batch(count, requests, seconds, merged)
        if self.sketches is not None:
            for rows, predictions in done:
                self.sketches.observe(rows, predictions)


def _as_request_error(exc: Exception) -> Exception:
    """What the estimator rejects in well-formed rows (NaN, values it cannot handle) is the request's
    problem: 422 with the estimator's message. Anything else stays an internal error."""
    if isinstance(exc, (ValueError, TypeError)):
        return ClientError(422, f"the model cannot predict these rows: {type(exc).__name__}: {exc}")
    return exc
