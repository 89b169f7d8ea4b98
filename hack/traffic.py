"""Traffic for a ModelDeployment on the embedded cluster, the way a client in the cluster sends it.

`Traffic` resolves the Service's name (`<name>.<namespace>.svc.cluster.local`) with the cluster DNS
(CoreDNS behind the kube-dns Service) and sends every request to that address: kube-proxy picks the pod.
Each request opens its own connection, so kube-proxy balances every request, and it never retries: a failed
request is counted as failed, which is what a rollout must avoid. Responses are counted by the model version
that answered. Batches that carry the truth (`batches_from_csv(..., with_truth=True)`) keep each answered row's
prediction id with its true label; `feed_back(delay)` sends the labels of predictions older than `delay` seconds
to the feedback endpoint, as a system whose outcomes arrive later does. Used by `make demo` and the end-to-end
tests.
"""
from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import dns.resolver
import httpx

PORT = 8080
DNS_SERVER = "10.0.0.10"  # hack/node.py's kube-dns Service
CLUSTER_DOMAIN = "cluster.local"


def resolve(service: str, namespace: str, timeout: float = 60) -> str:
    """The Service's ClusterIP, as the cluster DNS answers for its name."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [DNS_SERVER]
    resolver.lifetime = 2
    name = f"{service}.{namespace}.svc.{CLUSTER_DOMAIN}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            return resolver.resolve(name, "A")[0].address
        except (dns.exception.DNSException, OSError) as e:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} did not resolve through {DNS_SERVER} within {timeout:.0f}s: {e}") from e
            time.sleep(0.5)


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
    by_version: Counter = field(default_factory=Counter)

    def line(self) -> str:
        return (f"sent={self.sent} ok={self.ok} failed={self.failed}"
                + (f" by_version={dict(self.by_version)}" if self.by_version else "")
                + (f" errors={dict(self.errors)}" if self.errors else ""))


class Traffic:
    def __init__(self, namespace: str, service: str, model: str | None = None):
        self.namespace, self.service, self.model = namespace, service, model or service
        self.address = resolve(service, namespace)
        self.url = f"http://{self.address}:{PORT}/v2/models/{self.model}"
        self.stats = Stats()
        self.pending: list[tuple[float, str, list[Any]]] = []  # (answered at, request id, true labels of its rows)
        self.labels_sent = 0

    def wait_ready(self, timeout: float = 120) -> str:
        """Until the Service answers a readiness probe (some pod behind it is ready)."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                r = httpx.get(f"{self.url}/ready", timeout=2)
                if r.status_code == 200:
                    return self.address
                last = f"HTTP {r.status_code}"
            except httpx.HTTPError as e:
                last = type(e).__name__
            time.sleep(0.3)
        raise TimeoutError(f"service {self.namespace}/{self.service} ({self.address}) not ready after {timeout}s ({last})")

    def run(self, batches: Iterable[list[dict[str, Any]]], seconds: float, rate: float = 50.0,
            concurrency: int = 4) -> Stats:
        """Send `rate` requests per second for `seconds` (fewer if the batches run out), from
        `concurrency` threads; returns the counts of this run (also added to self.stats)."""
        run = Stats()
        source = iter(batches)
        lock = threading.Lock()
        deadline = time.monotonic() + seconds
        interval = concurrency / rate

        def worker() -> None:
            with self._client() as client:
                send(client)

        def send(client: httpx.Client) -> None:
            next_at = time.monotonic()
            while time.monotonic() < deadline:
                with lock:
                    item = next(source, None)
                if item is None:
                    return
                rows, truths = item if isinstance(item, tuple) else (item, None)
                error, version, request_id = self._send(client, rows)
                with lock:
                    run.sent += 1
                    if error is None:
                        run.ok += 1
                        run.by_version[version] += 1
                        if truths is not None:
                            self.pending.append((time.monotonic(), request_id, truths))
                    else:
                        run.failed += 1
                        run.errors[error] += 1
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
        self.stats.by_version.update(run.by_version)
        return run

    @staticmethod
    def _client() -> httpx.Client:
        """One client per sending thread: building one per request (an SSL context each time) cost 24 ms
        of CPU, which capped the load at about 40 requests/s. `connection: close` still opens a connection
        per request, so kube-proxy balances each one; httpx never retries."""
        return httpx.Client(timeout=10, headers={"connection": "close"})

    def _send(self, client: httpx.Client, rows: list[dict[str, Any]]) -> tuple[str | None, str | None, str | None]:
        try:
            r = client.post(f"{self.url}/infer", json=v2_request(rows))
        except httpx.HTTPError as e:
            return type(e).__name__, None, None
        if r.status_code != 200:
            return f"HTTP {r.status_code}", None, None
        body = r.json()
        return None, str(body.get("model_version")), body.get("id")

    def feed_back(self, delay: float = 0.0, chunk: int = 5000) -> int:
        """Send the true labels of the predictions answered more than `delay` seconds ago (ids
        `<request id>:<row>`), in calls of at most `chunk` labels; the labels sent. A refused call raises."""
        cutoff = time.monotonic() - delay
        due = [p for p in self.pending if p[0] <= cutoff]
        self.pending = [p for p in self.pending if p[0] > cutoff]
        ids = [f"{rid}:{i}" for _, rid, truths in due for i in range(len(truths))]
        targets = [t for _, _, truths in due for t in truths]
        with httpx.Client(timeout=30) as client:
            for i in range(0, len(ids), chunk):
                r = client.post(f"{self.url}/feedback", json={"ids": ids[i:i + chunk], "targets": targets[i:i + chunk]})
                if r.status_code != 200:
                    raise RuntimeError(f"feedback refused: HTTP {r.status_code} {r.text[:300]}")
        self.labels_sent += len(ids)
        return len(ids)

    def close(self) -> None:
        """Nothing to release (kept for callers that close a traffic source)."""


def batches_from_csv(path: str, target: str, batch: int = 8, repeat: bool = True, with_truth: bool = False
                     ) -> Iterator[Any]:
    """Rows of a CSV (without the target column) in batches, cycling when `repeat`; with `with_truth`, each
    batch is (rows, their true labels)."""
    import pandas as pd

    frame = pd.read_csv(path)
    truth = frame.pop(target).tolist()
    records = frame.to_dict(orient="records")
    while True:
        for i in range(0, len(records) - batch + 1, batch):
            yield (records[i:i + batch], truth[i:i + batch]) if with_truth else records[i:i + batch]
        if not repeat:
            return
