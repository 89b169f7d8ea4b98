"""Champion and challenger on the real node, with the Helm-installed operator (docs/challenger.md).

- Shadow: a version retrained on shuffled labels passes the offline gates (none are set) and runs as the
  challenger beside version 1, sent copies of live requests; true labels are fed back by prediction id, both
  versions' predictions of the same ids are paired, and McNemar's test rejects it. It never answers a user: every
  response of the test comes from version 1, the challenger's pods are not behind the Service, and it is removed.
- Canary by replicas: a good version serves a step's share of users through the one Service, passes the
  analysis, then takes everything; no request fails. The shuffled version in a canary is rejected by the unpaired
  test of each version's live accuracy on its own labelled rows.
- The watch: the shuffled version promoted by hand is rolled back when its live accuracy since the promotion is
  significantly below what version 1 showed on its own rows before it.
"""
from __future__ import annotations

import io
import time

import pandas as pd
import pytest

from hack.traffic import Traffic, batches_from_csv
from modelloop.names import PROMOTE_ANNOTATION, RETRAIN_ANNOTATION, RETRAIN_DATASET_ANNOTATION
from tests.e2e.helpers import API, status
from tests.fixtures.artifacts import secret
from tests.fixtures.cluster import ROOT, wait_for
from tests.fixtures.prometheus import NO_NODE
from tests.integration.test_training_controller import training

DATA = ROOT / "examples/data"


def shuffled_labels() -> bytes:
    frame = pd.read_csv(DATA / "churn.csv")
    frame["churned"] = frame["churned"].sample(frac=1.0, random_state=11).to_numpy()
    out = io.StringIO()
    frame.to_csv(out, index=False)
    return out.getvalue().encode()


def prepare(cluster, ns: str, s3) -> None:
    """The churn data and its shuffled-label copy in the store, the store's Secret and the ModelTraining."""
    s3.put("churn.csv", (DATA / "churn.csv").read_bytes())
    s3.put("churn-shuffled.csv", shuffled_labels())
    cluster.apply(secret(ns, s3))
    cluster.apply(training(ns, s3))


def deploy(cluster, ns: str, s3, rollout: dict, replicas: int = 2) -> None:
    cluster.apply({"apiVersion": API, "kind": "ModelDeployment", "metadata": {"name": "churn", "namespace": ns},
                   "spec": {"model": {"fromTraining": "churn"}, "replicas": replicas,
                            "storage": {"secretRef": {"name": "s3"}},
                            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
                            "feedback": {"uri": s3.uri("feedback/churn"), "maxDelay": "1h", "retention": "24h"},
                            "rollout": rollout}})
    cluster.kubectl("wait", "mdep/churn", "-n", ns, "--for=condition=Ready", "--timeout=300s")


def retrain(cluster, ns: str, dataset: str) -> None:
    cluster.kubectl("annotate", "--overwrite", "mtrain/churn", "-n", ns, f"{RETRAIN_ANNOTATION}={time.time():.0f}",
                    f"{RETRAIN_DATASET_ANNOTATION}={dataset}")


def drive(traffic: Traffic, until, timeout: float, what: str, seen, labels: bool = True) -> None:
    batches = batches_from_csv(str(DATA / "churn.csv"), "churned", with_truth=labels)
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; {seen()}")
        traffic.run(batches, seconds=5, rate=40)
        if labels:
            traffic.feed_back(delay=2)


@pytest.mark.optional(reason=NO_NODE)
def test_a_challenger_trained_on_shuffled_labels_is_rejected_by_the_paired_test_and_never_serves_a_user(
        helm_operator, cluster, e2e_namespace, s3):
    ns = e2e_namespace
    prepare(cluster, ns, s3)
    # No offline gate: only the live analysis stands between the shuffled version and the users. Agreement and
    # latency are opened wide so that the paired test on labels is what decides.
    deploy(cluster, ns, s3, {"strategy": "shadow", "analysis": {
        "window": "60s", "minRequests": 300, "minLabels": 60, "minAgreement": 0, "maxLatencyRatio": 20}})
    mdep = lambda: status(cluster, "mdep", ns)  # noqa: E731
    assert mdep()["modelVersion"] == 1
    traffic = Traffic(ns, "churn")
    traffic.wait_ready()
    retrain(cluster, ns, s3.uri("churn-shuffled.csv"))
    seen = lambda: f"deployment: {mdep().get('rollout')}; traffic: {traffic.stats.line()}"  # noqa: E731
    drive(traffic, lambda: (mdep().get("rollout") or {}).get("challenger") == 2, 300, "version 2 as the challenger",
          seen)
    assert cluster.get("service", "churn", "-n", ns)["spec"]["selector"].get("modelloop.dev/deployment") == "churn"
    drive(traffic, lambda: any(r["version"] == 2 for r in (mdep().get("rollout") or {}).get("rejected") or ()), 420,
          "version 2 rejected", seen)
    ro = mdep()["rollout"]
    gates = {g["name"]: g for g in ro["gates"]}
    print(f"shadow rejection: {ro['message']}; gates: {gates}; traffic: {traffic.stats.line()}")
    assert gates["performance"]["verdict"] == "fail" and "McNemar" in ro["rejected"][-1]["message"], gates
    assert gates["errorRate"]["verdict"] == "pass" and gates["latency"]["verdict"] == "pass", gates
    assert mdep()["modelVersion"] == 1 and mdep()["candidateVersion"] == 2
    wait_for(lambda: "NotFound" in cluster.kubectl("get", "deployment", "churn-challenger", "-n", ns,
                                                   check=False).stderr, timeout=60, message="the challenger removed")
    reasons = [e["reason"] for e in cluster.get("events", "-n", ns, "--field-selector",
                                                "involvedObject.kind=ModelDeployment")["items"]]
    assert "ChallengerStarted" in reasons and "ChallengerRejected" in reasons
    traffic.run(batches_from_csv(str(DATA / "churn.csv"), "churned"), seconds=5, rate=40)
    traffic.close()
    assert set(traffic.stats.by_version) == {"1"}, traffic.stats.line()  # no user ever got version 2's answer
    assert traffic.stats.failed == 0 and traffic.labels_sent > 300, traffic.stats.line()


@pytest.mark.optional(reason=NO_NODE)
def test_a_canary_by_replicas_serves_a_share_of_users_then_everyone_with_no_failed_request(
        helm_operator, cluster, e2e_namespace, s3):
    ns = e2e_namespace
    prepare(cluster, ns, s3)
    deploy(cluster, ns, s3, {"strategy": "canary", "canary": {"steps": [50]}, "analysis": {
        "window": "30s", "minRequests": 200, "maxLatencyRatio": 20, "watchFor": "0s"}}, replicas=2)
    mdep = lambda: status(cluster, "mdep", ns)  # noqa: E731
    traffic = Traffic(ns, "churn")
    traffic.wait_ready()
    retrain(cluster, ns, s3.uri("churn.csv"))
    seen = lambda: f"deployment: {mdep().get('rollout')}; traffic: {traffic.stats.line()}"  # noqa: E731
    shares = []

    def both_serve() -> bool:
        ro = mdep().get("rollout") or {}
        shares.append(ro.get("trafficShare"))
        return ro.get("phase") == "Canary" and traffic.stats.by_version.get("2", 0) > 50
    drive(traffic, both_serve, 300, "version 2 answering users beside version 1", seen, labels=False)
    assert traffic.stats.by_version.get("1", 0) > 0 and 0.5 in shares, (traffic.stats.line(), shares)
    drive(traffic, lambda: mdep().get("modelVersion") == 2 and (mdep().get("rollout") or {}).get("phase") == "Stable"
          and mdep().get("readyReplicas") == 2, 300, "version 2 promoted", seen, labels=False)
    traffic.close()
    print(f"canary: {mdep()['rollout']}; traffic: {traffic.stats.line()}")
    assert traffic.stats.failed == 0, traffic.stats.line()


@pytest.mark.optional(reason=NO_NODE)
def test_a_canary_worse_on_its_own_labelled_rows_is_rejected_by_the_unpaired_test(
        helm_operator, cluster, e2e_namespace, s3):
    ns = e2e_namespace
    prepare(cluster, ns, s3)
    deploy(cluster, ns, s3, {"strategy": "canary", "canary": {"steps": [50]}, "analysis": {
        "window": "60s", "minRequests": 200, "minLabels": 60, "maxLatencyRatio": 20}}, replicas=2)
    mdep = lambda: status(cluster, "mdep", ns)  # noqa: E731
    traffic = Traffic(ns, "churn")
    traffic.wait_ready()
    retrain(cluster, ns, s3.uri("churn-shuffled.csv"))
    seen = lambda: f"deployment: {mdep().get('rollout')}; traffic: {traffic.stats.line()}"  # noqa: E731
    drive(traffic, lambda: any(r["version"] == 2 for r in (mdep().get("rollout") or {}).get("rejected") or ()), 480,
          "version 2 rejected in its canary", seen)
    ro = mdep()["rollout"]
    gates = {g["name"]: g for g in ro["gates"]}
    print(f"canary rejection: {ro['message']}; gates: {gates}; traffic: {traffic.stats.line()}")
    assert gates["performance"]["verdict"] == "fail" and "unpaired" in gates["performance"]["message"], gates
    assert gates["agreement"]["verdict"] == "skip" and gates["errorRate"]["verdict"] == "pass", gates
    assert mdep()["modelVersion"] == 1 and traffic.stats.by_version.get("2", 0) > 0, traffic.stats.line()
    assert traffic.stats.failed == 0, traffic.stats.line()


@pytest.mark.optional(reason=NO_NODE)
def test_a_version_promoted_by_hand_is_rolled_back_when_its_live_accuracy_falls_below_the_previous_versions(
        helm_operator, cluster, e2e_namespace, s3):
    ns = e2e_namespace
    prepare(cluster, ns, s3)
    # The analysis never decides by itself (minRequests out of reach): a person promotes version 2, and only the
    # watch stands between it and the users.
    deploy(cluster, ns, s3, {"strategy": "shadow", "analysis": {
        "window": "30s", "minRequests": 10_000_000, "minLabels": 60, "watchFor": "15m"}})
    mdep = lambda: status(cluster, "mdep", ns)  # noqa: E731
    traffic = Traffic(ns, "churn")
    traffic.wait_ready()
    retrain(cluster, ns, s3.uri("churn-shuffled.csv"))
    seen = lambda: f"deployment: {mdep().get('rollout')}; traffic: {traffic.stats.line()}"  # noqa: E731
    drive(traffic, lambda: (mdep().get("rollout") or {}).get("challenger") == 2 and traffic.labels_sent > 400, 300,
          "version 2 as the challenger, and version 1's rows labelled", seen)
    cluster.kubectl("annotate", "mdep/churn", "-n", ns, f"{PROMOTE_ANNOTATION}=true")
    drive(traffic, lambda: (mdep().get("rollout") or {}).get("phase") == "Watching", 300, "version 2 watched", seen)
    drive(traffic, lambda: any(r["version"] == 2 for r in (mdep().get("rollout") or {}).get("rejected") or ()), 480,
          "version 2 rolled back by the watch", seen)
    ro = mdep()["rollout"]
    print(f"watch rollback: {ro['rejected'][-1]}; traffic: {traffic.stats.line()}")
    assert "rolled back while watched: live accuracy" in ro["rejected"][-1]["message"], ro["rejected"]
    wait_for(lambda: mdep().get("modelVersion") == 1 and mdep().get("readyReplicas") == 2, timeout=300,
             message="version 1 serving again")
    reasons = [e["reason"] for e in cluster.get("events", "-n", ns, "--field-selector",
                                                "involvedObject.kind=ModelDeployment")["items"]]
    assert "RolledBack" in reasons, reasons
    assert traffic.stats.failed == 0, traffic.stats.line()
