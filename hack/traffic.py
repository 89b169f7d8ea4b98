"""Traffic for a ModelDeployment on the embedded cluster, as kube-proxy would spread it.

The embedded cluster has no kube-proxy, so Service IPs do not route. `Traffic` follows the
Service's EndpointSlices (re-read every 0.2 s, ready and not terminating endpoints only) and sends
each request to the next endpoint in turn. It never retries: a failed request is counted as failed,
which is what a rollout must avoid. Used by `make demo` and the end-to-end tests.
"""
from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import httpx

from modelloop import kube

PORT = 8080


def v2_request(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A V2 infer request with one input per feature (text features as BYTES)."""
    inputs = []
    for name in rows[0]:
        values = [r[name] for r in rows]
        if all(isinstance(v, str) for v in values):
            inputs.append({"name": name, "shape": [len(values)], "datatype": "BYTES", "data": values})
        else:
            inputs.append({"name": name, "shape": [len(values)], "datatype": "FP64", "data": [float(v) for v in values]})
    return {"inputs": inputs}


@dataclass
class Stats:
    sent: int = 0
    ok: int = 0
    failed: int = 0
    errors: Counter = field(default_factory=Counter)
    by_endpoint: Counter = field(default_factory=Counter)

    def line(self) -> str:
        return f"sent={self.sent} ok={self.ok} failed={self.failed}" + (f" errors={dict(self.errors)}" if self.errors else "")


class Traffic:
    def __init__(self, namespace: str, service: str, model: str | None = None):
        self.namespace, self.service, self.model = namespace, service, model or service
        self._endpoints: list[str] = []
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()
        self.stats = Stats()

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                slices = kube.list_("discovery.k8s.io/v1", "EndpointSlice", self.namespace,
                                    f"kubernetes.io/service-name={self.service}")
                ready = sorted({a for s in slices for ep in s.get("endpoints") or ()
                                if (ep.get("conditions") or {}).get("ready")
                                and not (ep.get("conditions") or {}).get("terminating")
                                for a in ep.get("addresses") or ()})
                with self._lock:
                    self._endpoints = ready
            except Exception as e:  # noqa: BLE001 - keep the last known endpoints
                self.last_error = f"{type(e).__name__}: {e}"
            self._stop.wait(0.2)

    def endpoints(self) -> list[str]:
        with self._lock:
            return list(self._endpoints)

    def wait_ready(self, timeout: float = 120) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if eps := self.endpoints():
                return eps
            time.sleep(0.2)
        raise TimeoutError(f"no ready endpoint of service {self.namespace}/{self.service} after {timeout}s"
                           + (f" (last error: {self.last_error})" if self.last_error else ""))

    def run(self, batches: Iterable[list[dict[str, Any]]], seconds: float, rate: float = 50.0,
            concurrency: int = 4) -> Stats:
        """Send `rate` requests per second for `seconds` (fewer if the batches run out), from
        `concurrency` threads; returns the counts of this run (also added to self.stats)."""
        run = Stats()
        source = iter(batches)
        source_lock = threading.Lock()
        rr = itertools.count()
        deadline = time.monotonic() + seconds
        interval = concurrency / rate

        def worker() -> None:
            with httpx.Client(timeout=10) as client:
                next_at = time.monotonic()
                while time.monotonic() < deadline:
                    with source_lock:
                        rows = next(source, None)
                    if rows is None:
                        return
                    eps = self.endpoints()
                    if not eps:
                        time.sleep(0.05)
                        continue
                    ep = eps[next(rr) % len(eps)]
                    outcome = self._send(client, ep, rows)
                    with source_lock:
                        run.sent += 1
                        run.by_endpoint[ep] += 1
                        if outcome is None:
                            run.ok += 1
                        else:
                            run.failed += 1
                            run.errors[outcome] += 1
                    next_at += interval
                    time.sleep(max(0.0, next_at - time.monotonic()))

        threads = [threading.Thread(target=worker) for _ in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for k in ("sent", "ok", "failed"):
            setattr(self.stats, k, getattr(self.stats, k) + getattr(run, k))
        self.stats.errors.update(run.errors)
        self.stats.by_endpoint.update(run.by_endpoint)
        return run

    def _send(self, client: httpx.Client, endpoint: str, rows: list[dict[str, Any]]) -> str | None:
        try:
            r = client.post(f"http://{endpoint}:{PORT}/v2/models/{self.model}/infer", json=v2_request(rows))
        except httpx.HTTPError as e:
            return type(e).__name__
        return None if r.status_code == 200 else f"HTTP {r.status_code}"

    def close(self) -> None:
        self._stop.set()
        self._watcher.join(timeout=2)


def batches_from_csv(path: str, target: str, batch: int = 8, repeat: bool = True) -> Iterator[list[dict[str, Any]]]:
    """Rows of a CSV (without the target column) in batches, cycling when `repeat`."""
    import pandas as pd

    frame = pd.read_csv(path).drop(columns=[target])
    records = frame.to_dict(orient="records")
    while True:
        for i in range(0, len(records) - batch + 1, batch):
            yield records[i:i + batch]
        if not repeat:
            return
