"""Shared pieces of the end-to-end tests: resources as the examples write them, status reads, and
background traffic through a Service."""
from __future__ import annotations

import threading

import yaml

from hack.traffic import Traffic, batches_from_csv
from tests.fixtures.cluster import ROOT

CHURN = str(ROOT / "examples/data/churn.csv")
DRIFTED = str(ROOT / "examples/data/churn-drifted.csv")
API = "modelloop.dev/v1alpha1"


def status(cluster, kind: str, namespace: str, name: str = "churn") -> dict:
    return cluster.get(kind, name, "-n", namespace).get("status") or {}


def cond(st: dict, type_: str) -> dict:
    return next((c for c in st.get("conditions") or () if c["type"] == type_), {})


def examples(namespace: str, s3, bucket_prefix: str = "") -> list[dict]:
    """examples/*.yaml as a user applies them, pointed at the test's bucket and S3 server."""
    docs = []
    for f in ("training.yaml", "deployment.yaml", "driftmonitor.yaml"):
        for d in yaml.safe_load_all((ROOT / "examples" / f).read_text()):
            if not d:
                continue
            d["metadata"]["namespace"] = namespace
            if d["kind"] == "Secret":
                d["stringData"].update(s3.server.env)
            text = yaml.safe_dump(d).replace("s3://modelloop-demo/", s3.uri(bucket_prefix) + "/")
            docs.append(yaml.safe_load(text))
    return docs


def serve(cluster, namespace: str, uri: str, **spec) -> None:
    base = {"model": {"uri": uri}, "replicas": 2, "storage": {"secretRef": {"name": "s3"}},
            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
            "rollout": {"progressDeadlineSeconds": 60}}
    base.update(spec)
    if "autoscaling" in spec:  # the two are mutually exclusive
        base.pop("replicas")
    cluster.apply({"apiVersion": API, "kind": "ModelDeployment",
                   "metadata": {"name": "churn", "namespace": namespace}, "spec": base})


class BackgroundTraffic:
    """Traffic through the Service from a thread until stopped (a `with` block)."""

    def __init__(self, traffic: Traffic, path: str, rate: float = 60, concurrency: int = 4):
        self.traffic, self.path, self.rate, self.concurrency = traffic, path, rate, concurrency
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        batches = batches_from_csv(self.path, "churned")
        while not self._stop.is_set():
            self.traffic.run(batches, seconds=1, rate=self.rate, concurrency=self.concurrency)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self.traffic

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
