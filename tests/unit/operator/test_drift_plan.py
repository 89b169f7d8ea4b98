"""The DriftMonitor check, decided without a cluster: snapshots built by hand, the plan asserted (the status written
once, the Events, the retrain request recorded and when it is delivered, where the next window starts)."""
from __future__ import annotations

from datetime import datetime, timezone

from modelloop.api.drift import DriftMonitorSpec
from modelloop.plans import drift as decide
from modelloop.plans.drift import CheckError, DriftWorld, Serving, Waiting, Window

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc)


# ----------------------------------------------------------------------------- builders

def monitor(retrain_on: str = "either", **status) -> dict:
    return {"metadata": {"name": "mon", "namespace": "ml", "generation": 1, "labels": {}},
            "spec": {"deploymentRef": {"name": "web"}, "minSamples": 100, "consecutive": 2, "retrainOn": retrain_on,
                     "action": {"type": "retrain", "cooldown": "1h"}}, "status": status}


def deployment(feedback: bool = False, **status) -> dict:
    return {"metadata": {"name": "web"}, "spec": {"model": {"fromTraining": "churn"},
                                                  **({"feedback": {"uri": "s3://bucket/fb"}} if feedback else {})},
            "status": {"modelVersion": 1, **status}}


def training(allowed: bool = True) -> dict:
    return {"metadata": {"name": "churn"}, "spec": {"retrain": {"allowedMonitors": ["mon"] if allowed else []}},
            "status": {}}


SERVING = Serving(1, {"metric": {"name": "accuracy"}, "task": "classification", "metrics": {"accuracy": 0.9}},
                  {}, "s3://bucket/models/churn")


def report(drifted: bool) -> dict:
    return {"status": "ok", "dataset_drift": drifted, "drift_share": 0.5 if drifted else 0.0, "samples": 500,
            "features": [{"name": "x", "test": "psi", "score": 0.3 if drifted else 0.01, "drifted": drifted}]}


def world(obj: dict, window: Window | None = None, **reads) -> DriftWorld:
    reads = {"dep": deployment(), "serving": SERVING, "baseline_version": 1, "training_name": "churn", **reads}
    return DriftWorld(obj, DriftMonitorSpec.model_validate(obj["spec"]), NOW, window=window, **reads)


def reasons(plan) -> dict[str, str]:
    return {c["type"]: c["reason"] for c in plan.status["conditions"]}


def events(plan) -> list[str]:
    return [e[1] for e in plan.events]


DROP = {"1": {"labelled": 500, "metrics": {"accuracy": {"value": 0.5, "low": 0.45, "high": 0.55}}}}


# ----------------------------------------------------------------------------- windows

def test_a_window_without_drift_is_checked_and_the_next_one_starts_after_it():
    plan = decide.plan(world(monitor(), Window(report(False), 500, {"pod-a": {"rows": 500}})))
    assert plan.status["phase"] == "Watching" and plan.status["samples"] == 500
    assert reasons(plan) == {"Ready": "Checked", "DriftDetected": "NoDrift"}
    assert plan.next_baseline == {"pod-a": {"rows": 500}} and plan.deliver is None
    assert plan.status["report"] == {"uri": "s3://bucket/models/churn/reports/mon/report.html"}


def test_a_small_window_decides_nothing_and_keeps_the_baseline():
    plan = decide.plan(world(monitor(), Window(None, 40)))
    assert plan.status["phase"] == "InsufficientData" and plan.next_baseline is None and plan.report is None
    assert reasons(plan)["Ready"] == "InsufficientSamples"


def test_first_drift_is_an_event_and_counts_one_window():
    plan = decide.plan(world(monitor(), Window(report(True), 500), training=training()))
    assert plan.status["consecutiveDrifted"] == 1 and "retrainRequest" not in plan.status
    assert events(plan) == ["DriftDetected", "Checked"]


def test_drift_that_persists_records_a_retrain_request_to_deliver_after_the_one_status_write():
    obj = monitor(consecutiveDrifted=1, datasetDrift=True)
    plan = decide.plan(world(obj, Window(report(True), 500), training=training()))
    request = plan.status["retrainRequest"]
    assert request["training"] == "churn" and request["delivered"] is False
    assert request["value"].startswith("DriftMonitor mon at 2026-12-02T12:00:00Z: 1 of 1 features drifted")
    assert plan.deliver == request and plan.retrains == 1
    assert plan.status["consecutiveDrifted"] == 0 and plan.status["retrains"] == 1
    assert events(plan)[0] == "RetrainRequested"


def test_a_training_that_does_not_allow_the_monitor_is_a_denial_not_a_request():
    plan = decide.plan(world(monitor(consecutiveDrifted=1), Window(report(True), 500), training=training(False)))
    assert "retrainRequest" not in plan.status and plan.deliver is None
    assert events(plan)[0] == "RetrainDenied"


def test_a_new_serving_version_restarts_the_window():
    plan = decide.plan(world(monitor(consecutiveDrifted=1), Window(None, 0), baseline_version=0,
                             serving=Serving(2, {}, {}, "s3://bucket/models/churn")))
    assert plan.next_baseline == {} and plan.status["consecutiveDrifted"] == 0
    assert events(plan)[0] == "ReferenceChanged"


# ----------------------------------------------------------------------------- the retrain request's delivery

def test_a_request_this_daemon_delivered_is_marked_at_the_next_check_without_delivering_again():
    request = {"training": "churn", "value": "v1", "delivered": False}
    plan = decide.plan(world(monitor(retrainRequest=request), Window(None, 0), delivered="v1"))
    assert plan.status["retrainRequest"] == {**request, "delivered": True} and plan.deliver is None


def test_a_request_recorded_before_a_restart_is_delivered_again():
    request = {"training": "churn", "value": "v1", "delivered": False}
    plan = decide.plan(world(monitor(retrainRequest=request), problem=CheckError("NoReadyPods", "no pods")))
    assert plan.deliver == request and plan.status["retrainRequest"]["delivered"] is False


# ----------------------------------------------------------------------------- live performance

def test_a_significant_drop_of_live_performance_requests_a_retrain():
    w = world(monitor(), Window(report(False), 500), dep=deployment(feedback=True), performance=DROP,
              training=training())
    assert decide.retrain_considered(w)
    plan = decide.plan(w)
    assert reasons(plan)["PerformanceDegraded"] == "PerformanceDropped" and plan.status["performanceDropped"]
    assert events(plan)[:2] == ["PerformanceDropped", "RetrainRequested"]


def test_no_answer_on_performance_is_a_condition_not_an_error():
    plan = decide.plan(world(monitor(), Window(report(False), 500), dep=deployment(feedback=True),
                             performance_error="no pod answered with live performance"))
    assert reasons(plan)["PerformanceDegraded"] == "FeedbackUnavailable" and plan.error_reason is None


def test_drift_alone_does_not_read_the_training_when_retrain_on_is_performance():
    assert not decide.retrain_considered(world(monitor(retrain_on="performance"), Window(report(True), 500)))


# ----------------------------------------------------------------------------- checks that cannot run

def test_a_missing_deployment_is_an_error_counted_once():
    plan = decide.plan(world(monitor(), dep=None, serving=None, baseline_version=None,
                             problem=CheckError("DeploymentNotFound", "spec.deploymentRef: not found")))
    assert plan.status["phase"] == "Error" and plan.error_reason == "DeploymentNotFound"
    assert "report" not in plan.status and events(plan) == ["DeploymentNotFound"]


def test_a_rollout_in_progress_waits_with_ready_true():
    plan = decide.plan(world(monitor(), problem=Waiting("WaitingForRollout", "no ready pod serves version 1 yet")))
    assert reasons(plan) == {"Ready": "WaitingForRollout", "DriftDetected": "Undecided"}
    assert plan.error_reason is None and "phase" not in plan.status
