"""Serving on the real node: rolling updates, rollbacks and autoscaling under traffic that goes through the
Service (cluster DNS, kube-proxy), with the Helm-installed operator."""
from __future__ import annotations

import pytest

from hack.traffic import Traffic, batches_from_csv
from tests.e2e.helpers import CHURN, BackgroundTraffic, serve, status
from tests.fixtures.cluster import wait_for


def test_rolling_update_under_traffic_through_the_service_has_zero_failed_requests(
        helm_operator, cluster, e2e_namespace, e2e_store):
    ns, store = e2e_namespace, e2e_store
    store.add(2, store.read_metadata(1)["metric"]["value"])
    serve(cluster, ns, store.version_uri(1))
    cluster.kubectl("wait", "mdep/churn", "-n", ns, "--for=condition=Ready", "--timeout=180s")
    traffic = Traffic(ns, "churn")
    traffic.wait_ready()
    with BackgroundTraffic(traffic, CHURN):
        wait_for(lambda: traffic.stats.ok > 100, timeout=30, message="traffic to flow")
        old_pods = {p["metadata"]["name"] for p in cluster.get("pods", "-n", ns)["items"]}
        serve(cluster, ns, store.version_uri(2))
        wait_for(lambda: status(cluster, "mdep", ns).get("lastAvailableVersion") == 2, timeout=180,
                 message="version 2 rolled out")
        wait_for(lambda: not old_pods & {p["metadata"]["name"] for p in cluster.get("pods", "-n", ns)["items"]},
                 timeout=90, message="the old pods to be gone")
        before = traffic.stats.by_version["2"]
        wait_for(lambda: traffic.stats.by_version["2"] > before + 100, timeout=30, message="traffic after the rollout")
    print(f"rolling update through the Service: {traffic.stats.line()}")
    assert traffic.stats.failed == 0, traffic.stats.line()
    assert traffic.stats.by_version["1"] > 50 and traffic.stats.by_version["2"] > 100
    assert status(cluster, "mdep", ns)["modelVersion"] == 2


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
    meta["onnx"] = {"skipped": "a test version: only its model.skops, which cannot predict, is served"}
    store.commit_version(version, {meta["model"]["file"]: data}, meta)


def test_rollout_that_never_becomes_available_is_rolled_back_while_v1_serves(
        helm_operator, cluster, e2e_namespace, e2e_store):
    ns, store = e2e_namespace, e2e_store
    add_unservable_version(store, 2)
    serve(cluster, ns, store.version_uri(1), rollout={"progressDeadlineSeconds": 20})
    cluster.kubectl("wait", "mdep/churn", "-n", ns, "--for=condition=Ready", "--timeout=180s")
    traffic = Traffic(ns, "churn")
    traffic.wait_ready()
    with BackgroundTraffic(traffic, CHURN):
        serve(cluster, ns, store.version_uri(2), rollout={"progressDeadlineSeconds": 20})
        wait_for(lambda: 2 in (status(cluster, "mdep", ns).get("failedVersions") or []), timeout=180,
                 message="the rollback")
        st = status(cluster, "mdep", ns)
        assert st["modelVersion"] == 1 and st["previousVersion"] == 2
        cluster.kubectl("wait", "mdep/churn", "-n", ns, "--for=condition=Ready", "--timeout=120s")
        assert "failed its rollout" in status(cluster, "mdep", ns).get("promotionMessage", "")
    events = cluster.kubectl("get", "events", "-n", ns, "--field-selector",
                             "involvedObject.kind=ModelDeployment,reason=RolledBack", "-o", "json").stdout
    assert "did not become Available" in events
    assert traffic.stats.failed == 0, traffic.stats.line()  # v1 kept serving throughout
    assert set(traffic.stats.by_version) == {"1"}


def replicas(cluster, ns: str) -> int:
    return cluster.get("deployment", "churn", "-n", ns)["status"].get("readyReplicas") or 0


def autoscaling_report(cluster, ns: str, traffic: Traffic) -> str:
    """What a failed scale-up leaves to read: the HPA's status, the pods and their conditions, the
    namespace's recent events and the traffic that was sent."""
    hpa = cluster.get("hpa", "churn", "-n", ns).get("status") or {}
    pods = cluster.kubectl("get", "pods", "-n", ns, "-o", "wide", check=False).stdout
    events = cluster.kubectl("get", "events", "-n", ns, "--sort-by=.lastTimestamp", check=False).stdout
    node = cluster.kubectl("describe", "node", check=False).stdout
    allocated = node[node.find("Allocated resources"):][:600]
    return (f"HPA status: {hpa}\npods:\n{pods}\nevents (last 30):\n" + "\n".join(events.splitlines()[-30:]) +
            f"\nnode {allocated}\ntraffic: {traffic.stats.line()}")


@pytest.mark.timeout(900)
def test_autoscaling_scales_up_under_load_and_back_down_with_no_failed_request(
        helm_operator, cluster, e2e_namespace, e2e_store):
    """metrics-server reads the kubelet; the HPA (CPU, 50% of a 100m request) scales 1 → more under load
    and back to 1 after it (the embedded cluster's scale-down window is 15 s, its HPA sync period 5 s)."""
    ns, store = e2e_namespace, e2e_store
    serve(cluster, ns, store.version_uri(1), autoscaling={
        "minReplicas": 1, "maxReplicas": 3, "targetCpuUtilizationPercentage": 50})
    cluster.kubectl("wait", "mdep/churn", "-n", ns, "--for=condition=Ready", "--timeout=180s")
    wait_for(lambda: (cluster.get("hpa", "churn", "-n", ns).get("status") or {}).get("currentMetrics"),
             timeout=120, interval=2, message="the HPA to read CPU metrics from metrics-server")
    traffic = Traffic(ns, "churn")
    traffic.wait_ready()
    with BackgroundTraffic(traffic, CHURN, rate=200, concurrency=8):
        try:
            wait_for(lambda: replicas(cluster, ns) >= 2, timeout=240, interval=2, message="a scale-up under load")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{autoscaling_report(cluster, ns, traffic)}") from None
        peak = replicas(cluster, ns)
    wait_for(lambda: cluster.get("hpa", "churn", "-n", ns)["status"].get("desiredReplicas") == 1 and
             replicas(cluster, ns) == 1, timeout=300, interval=3, message="the scale-down after the load")
    # Requests sent while the extra pods go away are not lost either.
    after = traffic.run(batches_from_csv(CHURN, "churned"), seconds=5, rate=40)
    events = cluster.kubectl("get", "events", "-n", ns, "--field-selector", "involvedObject.kind=HorizontalPodAutoscaler",
                             "-o", "jsonpath={.items[*].message}").stdout
    print(f"autoscaling: peak {peak} ready replicas; traffic {traffic.stats.line()}; HPA events: {events}")
    assert peak >= 2 and traffic.stats.failed == 0 and after.failed == 0, traffic.stats.line()
