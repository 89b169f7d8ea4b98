"""The Argo CD health checks (charts/modelloop/argocd/<Kind>.lua) on live objects: the real operator drives
each kind to Ready and to a failure, the objects are read back from the API server as Argo CD would read
them, and the scripts run on them in gopher-lua as Argo CD runs them (tests/fixtures/gitops.py).

The unit tests (tests/unit/gitops/test_argocd_health.py) cover every state on fixtures; these check that
the fixtures are what the operator really writes."""
from __future__ import annotations

import json

from tests.fixtures.cluster import wait_for
from tests.integration.test_deployment_controller import deployment
from tests.integration.test_drift_controller import loop  # noqa: F401 - the fixture
from tests.integration.test_training_controller import HELD, KWOK, data, release, training  # noqa: F401 - `data` is a fixture

GROUP = "modelloop.dev"


def live(cluster, kind: str, namespace: str, name: str = "churn") -> dict:
    return cluster.get(f"{kind.lower()}s.{GROUP}", name, "-n", namespace)  # plural.group: no short-name guessing


def health_becomes(cluster, argocd_health, kind: str, namespace: str, status: str, name: str = "churn",
                   timeout: float = 90) -> dict:
    """Poll the live object until Argo CD's verdict is `status`; the verdict."""
    verdicts: list[dict] = []

    def check():
        verdicts.append(argocd_health(live(cluster, kind, namespace, name)))
        return verdicts[-1]["status"] == status

    try:
        wait_for(check, timeout=timeout, interval=1, message=f"{kind}/{name} to be {status} for Argo CD")
    except AssertionError as e:
        raise AssertionError(f"{e}; last verdict: {verdicts[-1] if verdicts else None}") from None
    return verdicts[-1]


def test_training_is_progressing_during_its_run_then_healthy(operator, cluster, namespace, data, argocd_health):
    from modelloop.training import train

    # Version 1 is in the store already (trained here, which also loads the trainer's libraries), so the
    # operator's run trains version 2. kwok holds its pod while this test trains version 2 as the pod would,
    # then completes it.
    doc = training(namespace, data, podTemplate=HELD)
    identity = {"name": "churn", "namespace": namespace, "uid": "x", "generation": 1}
    train(doc["spec"], version=1, identity={**identity, "run": "manual"})
    cluster.apply(doc)
    wait_for(lambda: (live(cluster, "ModelTraining", namespace).get("status") or {}).get("currentRun") == "churn-v2",
             timeout=30, message="run 2")
    verdict = argocd_health(live(cluster, "ModelTraining", namespace))
    assert verdict == {"status": "Progressing", "message": "RunInProgress: run churn-v2 is training version 2"}
    train(doc["spec"], version=2, identity={**identity, "run": "churn-v2"})
    release(cluster, namespace, "churn-v2")
    verdict = health_becomes(cluster, argocd_health, "ModelTraining", namespace, "Healthy", timeout=120)
    assert verdict["message"] == "VersionAvailable: version 2 is the latest good version"


def test_training_whose_run_fails_is_degraded_with_the_trainers_reason(operator, cluster, namespace, data,
                                                                        argocd_health):
    failing = {**KWOK, "labels": {"pod-container-running-failed.stage.kwok.x-k8s.io": "true"},
               "annotations": {"pod-container-running-failed.stage.kwok.x-k8s.io/exit-code": "3",
                               "pod-container-running-failed.stage.kwok.x-k8s.io/message":
                                   "DatasetUnreadable s3://bucket/churn.csv access denied"}}
    cluster.apply(training(namespace, data, podTemplate=failing))
    verdict = health_becomes(cluster, argocd_health, "ModelTraining", namespace, "Degraded")
    assert verdict["message"] == "RunFailed: exit code 3: DatasetUnreadable s3://bucket/churn.csv access denied"


def test_training_with_invalid_params_is_degraded_and_a_suspended_one_is_suspended(
        operator, cluster, namespace, data, argocd_health):
    cluster.apply(training(namespace, data, estimator={"class": "sklearn.ensemble.RandomForestClassifier",
                                                       "params": {"n_trees": 10}}))
    verdict = health_becomes(cluster, argocd_health, "ModelTraining", namespace, "Degraded")
    assert verdict["message"].startswith("InvalidSpec: ") and "n_trees" in verdict["message"]
    cluster.apply(training(namespace, data, name="later", suspend=True))
    verdict = health_becomes(cluster, argocd_health, "ModelTraining", namespace, "Suspended", name="later")
    assert verdict["message"] == "spec.suspend is true: no new run starts"


def test_deployment_is_healthy_when_serving(operator, cluster, namespace, store, argocd_health):
    cluster.apply(deployment(namespace, model={"uri": store.version_uri(1)}))
    verdict = health_becomes(cluster, argocd_health, "ModelDeployment", namespace, "Healthy")
    assert verdict["message"] == "Serving: version 1 is serving"


def test_deployment_of_a_missing_training_is_degraded(operator, cluster, namespace, argocd_health):
    doc = deployment(namespace, model={"fromTraining": "no-such-training"})
    doc["metadata"]["name"] = "orphan"
    del doc["spec"]["storage"]  # no Secret in this test: the missing training must be what is reported
    cluster.apply(doc)
    verdict = health_becomes(cluster, argocd_health, "ModelDeployment", namespace, "Degraded", name="orphan")
    assert verdict["message"] == (f"TrainingNotFound: spec.model.fromTraining: ModelTraining 'no-such-training' "
                                  f"not found in namespace {namespace}")


def test_a_paused_resource_is_suspended_even_when_its_spec_changes(operator, cluster, namespace, store, argocd_health):
    cluster.apply(deployment(namespace, model={"uri": store.version_uri(1)}))
    health_becomes(cluster, argocd_health, "ModelDeployment", namespace, "Healthy")
    cluster.kubectl("annotate", "mdep", "churn", "-n", namespace, "modelloop.dev/reconcile=disabled")
    cluster.kubectl("patch", "mdep", "churn", "-n", namespace, "--type=merge", "-p", json.dumps({"spec": {"replicas": 1}}))
    obj = live(cluster, "ModelDeployment", namespace)
    assert obj["metadata"]["generation"] > obj["status"]["observedGeneration"]  # the operator left it alone
    assert argocd_health(obj)["status"] == "Suspended"
    cluster.kubectl("annotate", "mdep", "churn", "-n", namespace, "modelloop.dev/reconcile-")
    health_becomes(cluster, argocd_health, "ModelDeployment", namespace, "Healthy")


def test_drift_monitor_is_healthy_when_checking_and_degraded_when_its_deployment_is_missing(
        cluster, namespace, loop, argocd_health):
    add_pods, monitor = loop
    add_pods(2)
    monitor(action={"type": "none"})
    wait_for(lambda: (live(cluster, "DriftMonitor", namespace).get("status") or {}).get("phase") == "Watching",
             timeout=60, message="a checked window")
    verdict = argocd_health(live(cluster, "DriftMonitor", namespace))
    assert verdict["status"] == "Healthy" and verdict["message"].startswith("Checked: checked "), verdict
    monitor(name="missing", deploymentRef={"name": "no-such-deployment"}, action={"type": "none"})
    verdict = health_becomes(cluster, argocd_health, "DriftMonitor", namespace, "Degraded", name="missing")
    assert verdict["message"] == (f"DeploymentNotFound: spec.deploymentRef: ModelDeployment 'no-such-deployment' "
                                  f"not found in namespace {namespace}")


def test_drift_monitor_of_unreachable_pods_is_degraded(cluster, namespace, loop, argocd_health):
    add_pods, monitor = loop
    add_pods(1, listening=False)
    monitor(consecutive=1, action={"type": "none"})
    verdict = health_becomes(cluster, argocd_health, "DriftMonitor", namespace, "Degraded", timeout=60)
    assert verdict["message"].startswith("SketchUnavailable: no pod answered with a sketch"), verdict
