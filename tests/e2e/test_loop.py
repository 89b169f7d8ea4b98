"""End to end on the local node: real trainer Jobs and real model servers as processes, a real
S3-compatible server, traffic through the Service's EndpointSlices, and the real operator.
"""
from __future__ import annotations

import json
import threading

import pytest

from hack.traffic import Traffic, batches_from_csv
from tests.fixtures.cluster import ROOT, wait_for

pytestmark = pytest.mark.localnode
CHURN = str(ROOT / "examples/data/churn.csv")
DRIFTED = str(ROOT / "examples/data/churn-drifted.csv")


def mdep_status(cluster, namespace) -> dict:
    return cluster.get("mdep", "churn", "-n", namespace).get("status") or {}


def cond(st: dict, type_: str) -> dict:
    return next((c for c in st.get("conditions") or () if c["type"] == type_), {})


def serve(cluster, namespace, uri: str, **spec) -> None:
    base = {"model": {"uri": uri}, "replicas": 2, "storage": {"secretRef": {"name": "s3"}},
            "rollout": {"progressDeadlineSeconds": 40}}
    base.update(spec)
    cluster.apply({"apiVersion": "modelloop.dev/v1alpha1", "kind": "ModelDeployment",
                   "metadata": {"name": "churn", "namespace": namespace}, "spec": base})


def background_traffic(traffic: Traffic, path: str, stop: threading.Event) -> threading.Thread:
    def run():
        batches = batches_from_csv(path, "churned")
        while not stop.is_set():
            traffic.run(batches, seconds=1, rate=60, concurrency=4)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_rolling_update_under_constant_traffic_has_zero_failed_requests(operator, cluster, namespace, store):
    store.add(2, store.read_metadata(1)["metric"]["value"])
    serve(cluster, namespace, store.version_uri(1))
    cluster.kubectl("wait", "mdep/churn", "-n", namespace, "--for=condition=Ready", "--timeout=120s")
    traffic = Traffic(namespace, "churn")
    traffic.wait_ready()
    stop = threading.Event()
    worker = background_traffic(traffic, CHURN, stop)
    try:
        wait_for(lambda: traffic.stats.ok > 100, timeout=30, message="traffic to flow")
        old_pods = {p["metadata"]["name"] for p in cluster.get("pods", "-n", namespace)["items"]}
        serve(cluster, namespace, store.version_uri(2))
        wait_for(lambda: mdep_status(cluster, namespace).get("lastAvailableVersion") == 2, timeout=180,
                 message="version 2 rolled out")
        wait_for(lambda: not old_pods & {p["metadata"]["name"] for p in cluster.get("pods", "-n", namespace)["items"]},
                 timeout=60, message="the old pods to be gone")
        before = traffic.stats.ok
        wait_for(lambda: traffic.stats.ok > before + 100, timeout=30, message="traffic after the rollout")
    finally:
        stop.set()
        worker.join()
        traffic.close()
    print(f"rolling update traffic: {traffic.stats.line()} by endpoint {dict(traffic.stats.by_endpoint)}")
    assert traffic.stats.failed == 0, traffic.stats.line()
    assert traffic.stats.sent > 300
    assert len(traffic.stats.by_endpoint) >= 4  # two old pods and two new ones answered
    assert mdep_status(cluster, namespace)["modelVersion"] == 2


def add_unservable_version(store, version: int) -> None:
    """A version that passes every checksum but whose model cannot predict from the schema's
    features: its servers fail their warm-up prediction and never become ready."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from modelloop.artifacts import serialize_model, sha256_bytes

    rng = np.random.default_rng(0)
    model = LogisticRegression().fit(rng.normal(size=(20, 2)), np.arange(20) % 2)
    data, trusted = serialize_model(model)
    meta = store.read_metadata(1)
    meta["version"] = version
    meta["model"].update(sha256=sha256_bytes(data), size=len(data), trustedTypes=trusted)
    store.commit_version(version, {meta["model"]["file"]: data}, meta)


def test_rollout_that_never_becomes_available_is_rolled_back(operator, cluster, namespace, store):
    add_unservable_version(store, 2)
    serve(cluster, namespace, store.version_uri(1), rollout={"progressDeadlineSeconds": 15})
    cluster.kubectl("wait", "mdep/churn", "-n", namespace, "--for=condition=Ready", "--timeout=120s")
    traffic = Traffic(namespace, "churn")
    traffic.wait_ready()
    stop = threading.Event()
    worker = background_traffic(traffic, CHURN, stop)
    try:
        serve(cluster, namespace, store.version_uri(2), rollout={"progressDeadlineSeconds": 15})
        wait_for(lambda: 2 in (mdep_status(cluster, namespace).get("failedVersions") or []), timeout=180,
                 message="the rollback")
        st = mdep_status(cluster, namespace)
        assert st["modelVersion"] == 1 and st["previousVersion"] == 2
        cluster.kubectl("wait", "mdep/churn", "-n", namespace, "--for=condition=Ready", "--timeout=120s")
        assert "failed its rollout" in mdep_status(cluster, namespace).get("promotionMessage", "")
    finally:
        stop.set()
        worker.join()
        traffic.close()
    events = cluster.kubectl("get", "events", "-n", namespace, "--field-selector",
                             "involvedObject.kind=ModelDeployment,reason=RolledBack", "-o", "json").stdout
    assert "did not become Available" in events
    assert traffic.stats.failed == 0, traffic.stats.line()  # v1 kept serving throughout


def test_the_whole_loop_train_serve_drift_retrain_promote(operator, cluster, namespace, s3):
    from tests.fixtures.artifacts import secret
    from tests.integration.test_training_controller import training

    s3.put("churn.csv", (ROOT / "examples/data/churn.csv").read_bytes())
    s3.put("churn-fresh.csv", (ROOT / "examples/data/churn-drifted.csv").read_bytes())
    cluster.apply(secret(namespace, s3))
    cluster.apply(training(namespace, s3, retrain={"allowedMonitors": ["churn"]}))
    cluster.apply({"apiVersion": "modelloop.dev/v1alpha1", "kind": "ModelDeployment",
                   "metadata": {"name": "churn", "namespace": namespace},
                   "spec": {"model": {"fromTraining": "churn"}, "replicas": 2,
                            "promotion": {"minMetric": 0.6, "maxRegression": 0.05}}})
    cluster.apply({"apiVersion": "modelloop.dev/v1alpha1", "kind": "DriftMonitor",
                   "metadata": {"name": "churn", "namespace": namespace},
                   "spec": {"deploymentRef": {"name": "churn"}, "interval": "10s", "minSamples": 200, "consecutive": 2,
                            "tests": {"numerical": "psi", "categorical": "chi2"}, "thresholds": {"driftShare": 0.2},
                            "action": {"type": "retrain", "cooldown": "1h", "datasetUri": s3.uri("churn-fresh.csv")}}})
    cluster.kubectl("wait", "mdep/churn", "-n", namespace, "--for=condition=Ready", "--timeout=240s")
    assert mdep_status(cluster, namespace)["modelVersion"] == 1
    traffic = Traffic(namespace, "churn")
    traffic.wait_ready()
    normal = traffic.run(batches_from_csv(CHURN, "churned"), seconds=8, rate=60)
    dmon = lambda: cluster.get("dmon", "churn", "-n", namespace).get("status") or {}  # noqa: E731
    wait_for(lambda: dmon().get("phase") == "Watching", timeout=90, message="a window without drift")
    assert not dmon().get("retrains")
    stop = threading.Event()
    worker = background_traffic(traffic, DRIFTED, stop)
    try:
        wait_for(lambda: dmon().get("retrains") == 1, timeout=180, message="drift to trigger a retrain")
        runs = lambda: cluster.get("mtrain", "churn", "-n", namespace)["status"].get("runs", [])  # noqa: E731
        wait_for(lambda: runs()[0]["version"] == 2 and runs()[0]["result"] == "Succeeded", timeout=240,
                 message="the retrain to succeed")
        assert runs()[0]["trigger"] == "RetrainRequested" and "churn-fresh.csv" in runs()[0]["reason"]
        wait_for(lambda: mdep_status(cluster, namespace).get("lastAvailableVersion") == 2, timeout=240,
                 message="version 2 to be promoted and rolled out")
        meta = json.loads(s3.get("models/churn/v2/metadata.json"))
        assert meta["dataset"]["uri"] == s3.uri("churn-fresh.csv")
        # The window restarts against the new reference: the drifted population is now normal.
        wait_for(lambda: dmon().get("modelVersion") == 2 and dmon().get("phase") == "Watching", timeout=120,
                 message="no drift against the new reference")
    finally:
        stop.set()
        worker.join()
        traffic.close()
    assert normal.failed == 0 and traffic.stats.failed == 0, traffic.stats.line()
    assert dmon()["retrains"] == 1
