"""The whole loop on the real node, with the Helm-installed operator: train → serve → live traffic through
the Service → drifted traffic → the monitor requests a retrain on fresh data → the new version is promoted
and rolled out, with zero failed requests; watched by a live Prometheus loaded with the chart's alert rules
(the drift alert fires, then resolves once the new version serves).

It is also the chaos test of the chart's two replicas: the leading one is killed (SIGKILL, no hand-over)
during the first training run, during the first rollout and during a drift check. Each time the standby
takes over within 30 s, and the loop completes with one Job per version and exactly one retrain request."""
from __future__ import annotations

import json

import pytest

from hack.traffic import Traffic, batches_from_csv
from tests.e2e.helpers import API, CHURN, DRIFTED, BackgroundTraffic, status
from tests.fixtures.artifacts import secret
from tests.fixtures.cluster import wait_for
from tests.fixtures.prometheus import NO_NODE
from tests.integration.test_training_controller import training


@pytest.mark.optional(reason=NO_NODE)
def test_the_whole_loop_train_serve_drift_retrain_promote(helm_operator, cluster, e2e_namespace, s3, prometheus):
    ns = e2e_namespace
    drift_alert = f'ALERTS{{alertname="ModelDriftDetected",alertstate="firing",namespace="{ns}",monitor="churn"}}'
    s3.put("churn.csv", open(CHURN, "rb").read())
    s3.put("churn-fresh.csv", open(DRIFTED, "rb").read())
    cluster.apply(secret(ns, s3))
    cluster.apply(training(ns, s3, retrain={"allowedMonitors": ["churn"]}))
    cluster.apply({"apiVersion": API, "kind": "ModelDeployment", "metadata": {"name": "churn", "namespace": ns},
                   "spec": {"model": {"fromTraining": "churn"}, "replicas": 2, "storage": {"secretRef": {"name": "s3"}},
                            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
                            "promotion": {"minMetric": 0.6, "maxRegression": 0.05}}})
    cluster.apply({"apiVersion": API, "kind": "DriftMonitor", "metadata": {"name": "churn", "namespace": ns},
                   "spec": {"deploymentRef": {"name": "churn"}, "interval": "10s", "minSamples": 200, "consecutive": 2,
                            "tests": {"numerical": "psi", "categorical": "chi2"}, "thresholds": {"driftShare": 0.2},
                            "action": {"type": "retrain", "cooldown": "1h", "datasetUri": s3.uri("churn-fresh.csv")}}})
    takeovers = []
    wait_for(lambda: status(cluster, "mtrain", ns).get("currentRun") == "churn-v1", timeout=120, message="run 1")
    takeovers.append(("training run", *helm_operator.kill_leader()))
    wait_for(lambda: status(cluster, "mdep", ns).get("modelVersion") == 1
             and status(cluster, "mdep", ns).get("phase") == "Progressing", timeout=300, message="the rollout of v1")
    takeovers.append(("rollout", *helm_operator.kill_leader()))
    cluster.kubectl("wait", "mdep/churn", "-n", ns, "--for=condition=Ready", "--timeout=300s")
    assert status(cluster, "mdep", ns)["modelVersion"] == 1
    traffic = Traffic(ns, "churn")
    traffic.wait_ready()
    normal = traffic.run(batches_from_csv(CHURN, "churned"), seconds=12, rate=60)
    dmon = lambda: status(cluster, "dmon", ns)  # noqa: E731
    wait_for(lambda: dmon().get("phase") == "Watching", timeout=90, message="a window without drift")
    assert not dmon().get("retrains")
    with BackgroundTraffic(traffic, DRIFTED):
        wait_for(lambda: dmon().get("consecutiveDrifted") == 1, timeout=120, message="a first drifted window")
        takeovers.append(("drift check", *helm_operator.kill_leader()))
        wait_for(lambda: dmon().get("retrains") == 1, timeout=240, message="drift to trigger a retrain")
        # The monitor reported drift for two windows (10 s each); Prometheus scrapes and evaluates every 2 s.
        wait_for(lambda: prometheus.value(f"max_over_time({drift_alert}[5m])") == 1, timeout=30,
                 message="the ModelDriftDetected alert to have fired")
        runs = lambda: status(cluster, "mtrain", ns).get("runs", [])  # noqa: E731
        wait_for(lambda: runs()[0]["version"] == 2 and runs()[0]["result"] == "Succeeded", timeout=300,
                 message="the retrain to succeed")
        assert runs()[0]["trigger"] == "RetrainRequested" and "churn-fresh.csv" in runs()[0]["reason"]
        wait_for(lambda: status(cluster, "mdep", ns).get("lastAvailableVersion") == 2, timeout=300,
                 message="version 2 to be promoted and rolled out")
        meta = json.loads(s3.get("models/churn/v2/metadata.json"))
        assert meta["dataset"]["uri"] == s3.uri("churn-fresh.csv")
        # The window restarts against the new reference: the drifted population is now normal.
        wait_for(lambda: dmon().get("modelVersion") == 2 and dmon().get("phase") == "Watching", timeout=150,
                 message="no drift against the new reference")
        wait_for(lambda: not prometheus.alerts("ModelDriftDetected", namespace=ns), timeout=30,
                 message="the drift alert to resolve")
        # Request rate and latency series for every serving pod, labelled with its deployment and version.
        pods = {p["metadata"]["name"] for p in cluster.get("pods", "-n", ns, "-l", "modelloop.dev/deployment=churn")[
            "items"] if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")}
        series = lambda q: {r["metric"]["pod"]: r["metric"] for r in prometheus.query(q)}  # noqa: E731
        rate = f'sum by (pod, deployment, model_version) (rate(modelloop_server_requests_total{{namespace="{ns}"}}[30s]))'
        latency = (f'histogram_quantile(0.99, sum by (pod, le) (rate(modelloop_server_request_duration_seconds_bucket'
                   f'{{namespace="{ns}"}}[30s])))')
        wait_for(lambda: pods <= set(series(rate)) and pods <= set(series(latency)), timeout=30,
                 message=f"request rate and latency series of every server pod {sorted(pods)}")
        assert {m["model_version"] for p, m in series(rate).items() if p in pods} == {"2"}
        assert all(m["deployment"] == "churn" for m in series(rate).values())
    operator_pods = [p["metadata"]["name"] for p in cluster.get(
        "pods", "-n", helm_operator.namespace, "-l", "app.kubernetes.io/name=modelloop-operator")["items"]
        if not p["metadata"].get("deletionTimestamp")]
    job = f"{helm_operator.release}-metrics"
    assert [prometheus.value(f'up{{job="{job}",pod="{pod}"}}') for pod in operator_pods] == [1] * len(operator_pods), \
        f"the operator's targets: {prometheus.targets(job)}"
    print(f"whole loop through the Service: {traffic.stats.line()}")
    assert normal.failed == 0 and traffic.stats.failed == 0, traffic.stats.line()
    assert traffic.stats.by_version["1"] > 0 and traffic.stats.by_version["2"] > 0
    assert dmon()["retrains"] == 1
    assert not helm_operator.forbidden()
    # Chaos: one Job per version, one retrain request delivered once, and every takeover within 30 s.
    mtrain = status(cluster, "mtrain", ns)
    assert [(r["version"], r["trigger"]) for r in mtrain["runs"]] == [(2, "RetrainRequested"), (1, "Created")]
    assert mtrain["nextVersion"] == 3
    assert dmon()["retrainRequest"]["delivered"] and mtrain["handledRequest"] == dmon()["retrainRequest"]["value"]
    for moment, pod, seconds in takeovers:
        print(f"killed the leader {pod} during the {moment}: another replica led {seconds:.1f}s later")
    assert all(seconds < 30 for _, _, seconds in takeovers), takeovers
