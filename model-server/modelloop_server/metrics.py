"""Prometheus metrics of one server process, served at /metrics (names start with modelloop_server_).

/metrics is on the inference port, open to every client. What it says about predictions (rows per
class, or a histogram of predicted values) is published in windows of at least `min_rows` rows, the
sketch's window (--sketch-min-rows): with live counts, a client could read them before and after its
one request and learn that request's class or value bin (docs/security.md, "Clients of the inference
port").
"""
from __future__ import annotations

import bisect
import itertools
import math
import threading
from typing import Any, Iterator, Sequence

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.utils import floatToGoString

from .live import DEFAULT_MIN_ROWS
from .model import ServedModel

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ROW_BUCKETS = tuple(float(2 ** i) for i in range(13))  # 1 .. 4096
REQUEST_BUCKETS = tuple(float(2 ** i) for i in range(9))  # 1 .. 256
PREFIX = "modelloop_server"


class ServerMetrics:
    """All metrics in a registry of their own (one per app, so tests can run several apps in a process)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, min_rows: int = DEFAULT_MIN_ROWS) -> None:
        self.min_rows = min_rows  # the window of the prediction distribution (--sketch-min-rows)
        self.registry = registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        self.requests = Counter(f"{PREFIX}_requests", "HTTP requests answered, by route template and status code.",
                                ["route", "code"], registry=registry)
        self.latency = Histogram(f"{PREFIX}_request_duration_seconds",
                                 "Time from request start to response sent, by route template.",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=registry)
        self.in_flight = Gauge(f"{PREFIX}_requests_in_flight", "HTTP requests being served.", registry=registry)
        self.shadow = Counter(f"{PREFIX}_shadow_copies", "Inference requests copied to the challenger (shadow), by "
                              "outcome: sent, busy (its queue was full), unreachable, timeout, failed.", ["outcome"],
                              registry=registry)
        self.refused = Counter(f"{PREFIX}_refused", "Requests refused by a server limit, by limit (concurrency, "
                               "queue, rows, values, string_length, body_bytes, body_timeout, header_timeout, "
                               "header_bytes, feedback).", ["limit"], registry=registry)
        self.batch_rows = Histogram(f"{PREFIX}_batch_rows", "Rows per prediction call (after batching).",
                                    buckets=ROW_BUCKETS, registry=registry)
        self.batch_requests = Histogram(f"{PREFIX}_batch_requests", "Requests merged into one prediction call.",
                                        buckets=REQUEST_BUCKETS, registry=registry)
        self.predict_latency = Histogram(f"{PREFIX}_predict_duration_seconds",
                                         "Time of one prediction call on the worker thread.",
                                         buckets=LATENCY_BUCKETS, registry=registry)
        self.predicted_rows = Counter(f"{PREFIX}_predicted_rows", "Rows predicted.", registry=registry)
        self.ready = Gauge(f"{PREFIX}_ready", "1 when the model is loaded, warmed up and not draining.",
                           registry=registry)
        self.records = Counter(f"{PREFIX}_records", "Prediction records by what became of them: written (to the "
                               "store) or dropped (the buffer was full while the store failed).", ["result"],
                               registry=registry)
        self.feedback = Counter(f"{PREFIX}_feedback_labels", "Labels received by /feedback, by result (stored, "
                                "refused).", ["result"], registry=registry)
        self.model_info = Info(f"{PREFIX}_model", "The served model version.", registry=registry)
        self.distribution: PredictionDistribution | None = None
        self._request_children: dict[tuple[str, int], Any] = {}
        self._latency_children: dict[str, Any] = {}

    def set_model(self, model: ServedModel, prediction_edges: Sequence[float] = ()) -> None:
        """Model metrics: version info and the prediction distribution (per class, or a histogram whose
        buckets are the reference's prediction bin edges), published in windows of `min_rows` rows."""
        self.model_info.info({"model": model.name, "version": str(model.version), "sha256": model.sha256,
                              "runtime": model.runtime})
        buckets = sorted({float(e) for e in prediction_edges if np.isfinite(e)}) or list(LATENCY_BUCKETS)
        self.distribution = PredictionDistribution(model.classifier, buckets, self.min_rows)
        self.registry.register(self.distribution)

    def observe_request(self, route: str, code: int, seconds: float) -> None:
        child = self._request_children.get((route, code))
        if child is None:
            child = self._request_children[(route, code)] = self.requests.labels(route, str(code))
        child.inc()
        latency = self._latency_children.get(route)
        if latency is None:
            latency = self._latency_children[route] = self.latency.labels(route)
        latency.observe(seconds)

    def observe_batch(self, rows: int, requests: int, seconds: float, predictions: np.ndarray | None) -> None:
        self.batch_rows.observe(rows)
        self.batch_requests.observe(requests)
        self.predict_latency.observe(seconds)
        self.predicted_rows.inc(rows)
        if predictions is not None and self.distribution is not None:
            self.distribution.observe(predictions)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class PredictionDistribution:
    """`modelloop_server_predictions_total{class}` (classifiers) or the `modelloop_server_prediction_value`
    histogram (regressors), as a collector: rows are counted as they are predicted, and the counts are
    published once at least `min_rows` rows arrived since the previous publication. Until then /metrics
    shows the previous counts, so two readings differ by no row or by `min_rows` rows or more."""

    # Batches up to this many rows are binned in Python: numpy's calls cost more than they save on a few rows.
    SMALL_BATCH = 32

    def __init__(self, classifier: bool, buckets: Sequence[float], min_rows: int) -> None:
        if min_rows < 1:
            raise ValueError(f"min_rows {min_rows} must be at least 1")
        self.classifier = classifier
        self.min_rows = min_rows
        self.upper = [*buckets, math.inf]  # the histogram's `le` bounds
        self._lock = threading.Lock()
        self._pending_rows = 0
        self._pending_classes: dict[Any, int] = {}
        self._pending_bins = [0] * len(self.upper)
        self._pending_sum = 0.0
        self._classes: dict[str, int] = {}  # published from here on
        self._bins = [0] * len(self.upper)
        self._sum = 0.0

    def observe(self, predictions: np.ndarray) -> None:
        """Count a batch's predictions (on the prediction thread)."""
        if self.classifier:
            values, counts = np.unique(predictions.astype(str) if predictions.dtype == object else predictions,
                                       return_counts=True)
            with self._lock:
                pending = self._pending_classes
                for value, count in zip(values.tolist(), counts.tolist()):
                    pending[value] = pending.get(value, 0) + count
                self._pending_rows += len(predictions)
                if self._pending_rows >= self.min_rows:
                    self._publish()
            return
        # bucket i counts the values <= upper[i] and > upper[i-1]; NaN counts in +Inf's
        upper, last = self.upper, len(self.upper) - 1
        if len(predictions) > self.SMALL_BATCH:
            array = np.asarray(predictions, dtype=np.float64).reshape(-1)
            binned = np.bincount(np.minimum(np.searchsorted(upper, array, side="left"), last), minlength=len(upper))
            total = float(array.sum())
        with self._lock:
            bins = self._pending_bins
            if len(predictions) > self.SMALL_BATCH:
                for slot, count in enumerate(binned.tolist()):
                    bins[slot] += count
                self._pending_sum += total
            else:
                for value in predictions.tolist():
                    bins[bisect.bisect_left(upper, value) if value == value else last] += 1
                    self._pending_sum += value
            self._pending_rows += len(predictions)
            if self._pending_rows >= self.min_rows:
                self._publish()

    def _publish(self) -> None:
        for value, count in self._pending_classes.items():
            label = str(value)
            self._classes[label] = self._classes.get(label, 0) + count
        self._bins = [published + pending for published, pending in zip(self._bins, self._pending_bins)]
        self._sum += self._pending_sum
        self._pending_classes = {}
        self._pending_bins = [0] * len(self.upper)
        self._pending_sum = 0.0
        self._pending_rows = 0

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            classes, bins, total = dict(self._classes), self._bins, self._sum
        if self.classifier:
            family = CounterMetricFamily(f"{PREFIX}_predictions", "Predicted rows by predicted class, published "
                                         "in windows of at least --sketch-min-rows rows.", labels=["class"])
            for label, count in classes.items():
                family.add_metric([label], count)
            yield family
            return
        histogram = HistogramMetricFamily(f"{PREFIX}_prediction_value", "Predicted values, published in windows "
                                          "of at least --sketch-min-rows rows.", labels=[])
        histogram.add_metric([], [(floatToGoString(bound), count)
                                  for bound, count in zip(self.upper, itertools.accumulate(bins))], total)
        yield histogram
