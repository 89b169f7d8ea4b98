"""Outcomes on the real node, with the Helm-installed operator: the servers record every prediction, the test
feeds the true labels back by prediction id (5 s late, through the Service, so any replica takes them), and the
DriftMonitor decides on live performance (docs/outcomes.md).

- Concept drift: inputs as in training, the relation to the label changed. The input tests stay quiet, live
  ROC AUC falls significantly below hold-out, a retrain is requested because of performance, the new version
  is promoted and its live performance holds.
- Harmless drift: inputs shift, the relation holds. Input drift is reported, live performance holds, and with
  retrainOn: performance nothing is retrained.
Both with zero failed requests and every label accepted."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from hack.traffic import Traffic, batches_from_csv
from modelloop import report
from tests.fixtures.browser import pixels_near, screenshot
from tests.e2e.helpers import API, cond, status
from tests.fixtures.artifacts import secret
from tests.fixtures.cluster import ROOT, wait_for
from tests.fixtures.prometheus import NO_NODE
from tests.integration.test_training_controller import training

DATA = ROOT / "examples/data"


def deploy(cluster, ns: str, s3, monitor: dict) -> None:
    cluster.apply({"apiVersion": API, "kind": "ModelDeployment", "metadata": {"name": "churn", "namespace": ns},
                   "spec": {"model": {"fromTraining": "churn"}, "replicas": 2, "storage": {"secretRef": {"name": "s3"}},
                            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
                            "promotion": {"minMetric": 0.6, "maxRegression": 0.05},
                            "feedback": {"uri": s3.uri("feedback/churn"), "maxDelay": "1h", "retention": "24h"}}})
    cluster.apply({"apiVersion": API, "kind": "DriftMonitor", "metadata": {"name": "churn", "namespace": ns},
                   "spec": {"deploymentRef": {"name": "churn"}, "interval": "10s", "minSamples": 200, "consecutive": 2,
                            "thresholds": {"driftShare": 0.2}, "retrainOn": "performance",
                            "performance": {"minLabels": 200, "maxDrop": 0.05, "window": "10m"}, **monitor}})
    cluster.kubectl("wait", "mdep/churn", "-n", ns, "--for=condition=Ready", "--timeout=300s")


def drive(traffic: Traffic, path: str, until, timeout: float, what: str, monitor) -> None:
    """Labelled traffic from `path`, its labels fed back 5 s late, until `until()` or the timeout."""
    batches = batches_from_csv(str(path), "churned", with_truth=True)
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; monitor: {monitor()}")
        traffic.run(batches, seconds=5, rate=40)
        traffic.feed_back(delay=5)


@pytest.mark.optional(reason=NO_NODE)
def test_concept_drift_retrains_on_live_performance_and_the_new_version_holds(helm_operator, cluster, e2e_namespace,
                                                                              s3, tmp_path):
    ns = e2e_namespace
    s3.put("churn-drifted.csv", (DATA / "churn-drifted.csv").read_bytes())
    s3.put("churn-concept-fresh.csv", (DATA / "churn-concept-fresh.csv").read_bytes())
    cluster.apply(secret(ns, s3))
    cluster.apply(training(ns, s3, retrain={"allowedMonitors": ["churn"]},
                           dataset={"uri": s3.uri("churn-drifted.csv"), "target": "churned",
                                    "categorical": ["plan", "region"]}))
    deploy(cluster, ns, s3, {"action": {"type": "retrain", "cooldown": "1h",
                                        "datasetUri": s3.uri("churn-concept-fresh.csv")}})
    dmon = lambda: status(cluster, "dmon", ns)  # noqa: E731
    traffic = Traffic(ns, "churn")
    traffic.wait_ready()
    drive(traffic, DATA / "churn-concept.csv", lambda: dmon().get("retrains") == 1, 300,
          "a retrain requested because of performance", dmon)
    dropped = cond(dmon(), "PerformanceDegraded")
    assert dropped["status"] == "True" and dropped["reason"] == "PerformanceDropped", dropped
    assert not dmon().get("datasetDrift"), cond(dmon(), "DriftDetected")  # the inputs did not move
    assert "live roc_auc of version 1" in dmon()["retrainRequest"]["value"]
    served = lambda: status(cluster, "mdep", ns)  # noqa: E731

    def holds() -> bool:
        entry = next((e for e in dmon().get("performance") or [] if e["version"] == 2), {})
        return served().get("modelVersion") == 2 and entry.get("dropped") is False
    drive(traffic, DATA / "churn-concept.csv", holds, 420, "version 2 to serve and hold its live performance", dmon)
    assert cond(dmon(), "PerformanceDegraded")["reason"] == "PerformanceHolds"
    reasons = [e["reason"] for e in cluster.get("events", "-n", ns, "--field-selector",
                                                "involvedObject.kind=DriftMonitor")["items"]]
    assert "PerformanceDropped" in reasons and "PerformanceRecovered" in reasons
    print(f"concept drift: {traffic.stats.line()}; {traffic.labels_sent} labels; {dmon()['performance']}")
    assert traffic.stats.failed == 0 and traffic.labels_sent > 400
    # The monitor's report, printed as a person prints it and looked at as a person looks at it.
    printed = subprocess.run([sys.executable, "-m", "modelloop.cli", "report", "dmon/churn", "-n", ns,
                              "--kubeconfig", str(cluster.kubeconfig)], capture_output=True, text=True, timeout=60)
    assert printed.returncode == 0, printed.stderr
    page = printed.stdout
    assert "PerformanceDropped" in page and "RetrainRequested" in page and "PerformanceRecovered" in page
    assert ">v1</text>" in page and ">v2</text>" in page  # both versions' live lines are labelled on the chart
    (tmp_path / "report.html").write_text(page)
    image = screenshot(page)
    image.save(tmp_path / "report.png")
    seen = {name: pixels_near(image, colour) for name, colour in (("live", report.LIVE), ("hold-out", report.HOLDOUT))}
    seen["reference"] = pixels_near(image, report.REFERENCE, tolerance=12)
    assert seen["live"] > 1000 and seen["hold-out"] > 400 and seen["reference"] > 5000, (seen, tmp_path)


@pytest.mark.optional(reason=NO_NODE)
def test_harmless_drift_is_reported_and_retrains_nothing(helm_operator, cluster, e2e_namespace, s3):
    ns = e2e_namespace
    s3.put("churn-concept-fresh.csv", (DATA / "churn-concept-fresh.csv").read_bytes())
    cluster.apply(secret(ns, s3))
    cluster.apply(training(ns, s3, retrain={"allowedMonitors": ["churn"]},
                           dataset={"uri": s3.uri("churn-concept-fresh.csv"), "target": "churned",
                                    "categorical": ["plan", "region"]}))
    deploy(cluster, ns, s3, {"action": {"type": "retrain", "cooldown": "0s"}})
    dmon = lambda: status(cluster, "dmon", ns)  # noqa: E731
    traffic = Traffic(ns, "churn")
    traffic.wait_ready()
    decided_with_drift = []

    def drift_and_performance_holds() -> bool:
        d = dmon()
        if d.get("datasetDrift") and cond(d, "PerformanceDegraded").get("reason") == "PerformanceHolds":
            decided_with_drift.append(d["lastCheckTime"])
        return len(set(decided_with_drift)) >= 3
    drive(traffic, DATA / "churn-shifted.csv", drift_and_performance_holds, 300,
          "three checks that see drift and a performance that holds", dmon)
    assert cond(dmon(), "DriftDetected")["status"] == "True"
    assert not dmon().get("retrains")
    assert [r["version"] for r in status(cluster, "mtrain", ns)["runs"]] == [1]
    print(f"harmless drift: {traffic.stats.line()}; {traffic.labels_sent} labels; {dmon()['performance']}")
    assert traffic.stats.failed == 0
