"""Prometheus metrics of one server process, served at /metrics (names start with modelloop_server_)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from .model import ServedModel

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ROW_BUCKETS = tuple(float(2 ** i) for i in range(13))  # 1 .. 4096
REQUEST_BUCKETS = tuple(float(2 ** i) for i in range(9))  # 1 .. 256
PREFIX = "modelloop_server"


class ServerMetrics:
    """All metrics in a registry of their own (one per app, so tests can run several apps in a process)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
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
                               "queue, rows, body_timeout, header_timeout, header_bytes).", ["limit"],
                               registry=registry)
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
        self.class_predictions: Counter | None = None
        self.prediction_values: Histogram | None = None
        self._request_children: dict[tuple[str, int], Any] = {}
        self._latency_children: dict[str, Any] = {}
        self._class_children: dict[Any, Any] = {}

    def set_model(self, model: ServedModel, prediction_edges: Sequence[float] = ()) -> None:
        """Model metrics: version info and the prediction distribution (per class, or a histogram whose
        buckets are the reference's prediction bin edges)."""
        self.model_info.info({"model": model.name, "version": str(model.version), "sha256": model.sha256,
                              "runtime": model.runtime})
        if model.classifier:
            self.class_predictions = Counter(f"{PREFIX}_predictions", "Predicted rows by predicted class.",
                                             ["class"], registry=self.registry)
        else:
            buckets = sorted({float(e) for e in prediction_edges if np.isfinite(e)}) or list(LATENCY_BUCKETS)
            self.prediction_values = Histogram(f"{PREFIX}_prediction_value", "Predicted values.",
                                               buckets=buckets, registry=self.registry)

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
        if predictions is None:
            return
        if self.class_predictions is not None:
            values, counts = np.unique(predictions.astype(str) if predictions.dtype == object else predictions,
                                       return_counts=True)
            for value, count in zip(values.tolist(), counts.tolist()):
                child = self._class_children.get(value)
                if child is None:
                    child = self._class_children[value] = self.class_predictions.labels(str(value))
                child.inc(count)
        elif self.prediction_values is not None:
            for value in predictions.tolist():
                self.prediction_values.observe(value)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
