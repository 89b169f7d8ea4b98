"""The ModelTraining reconcile, decided without a cluster: snapshots built by hand, the plan asserted (the Job to
create, the status, the Events, the Jobs to clean up, what retention deletes)."""
from __future__ import annotations

from modelloop.api import ModelTrainingSpec
from modelloop.plans import training as decide
from modelloop.plans.training import Checked, TrainingWorld

NOW = "2026-12-02T12:00:00Z"
OUT = "s3://bucket/models/churn"
SPEC = {"dataset": {"uri": "s3://bucket/churn.csv", "target": "y"},
        "estimator": {"class": "sklearn.linear_model.LogisticRegression"}, "output": {"uri": OUT, "keepVersions": 2}}


# ----------------------------------------------------------------------------- builders

def training(generation: int = 1, annotations: dict | None = None, suspend: bool = False, **status) -> dict:
    return {"apiVersion": "modelloop.dev/v1alpha1", "kind": "ModelTraining",
            "metadata": {"name": "churn", "namespace": "ml", "uid": "u1", "generation": generation,
                         "annotations": annotations or {}},
            "spec": {**SPEC, "suspend": suspend}, "status": status}


def job(version: int, outcome: str | None = None) -> dict:
    conditions = [{"type": {"Succeeded": "Complete", "Failed": "Failed"}[outcome], "status": "True"}] if outcome else []
    return {"metadata": {"name": f"churn-v{version}", "labels": {"modelloop.dev/version": str(version)},
                         "creationTimestamp": "2026-12-02T11:00:00Z"}, "status": {"conditions": conditions}}


def run(version: int, result: str = "Running", generation: int = 1, **fields) -> dict:
    return {"version": version, "job": f"churn-v{version}", "trigger": "Created", "generation": generation,
            "startTime": "2026-12-02T11:00:00Z", "result": result, **fields}


def verified(version: int, accuracy: float = 0.9) -> Checked:
    return Checked(metadata={"uri": f"{OUT}/v{version}", "metrics": {"accuracy": accuracy},
                             "metric": {"name": "accuracy", "value": accuracy},
                             "metadata": {"onnx": {"file": "model.onnx"}}})


def world(obj: dict, jobs: list[dict] = (), ended: dict | None = None, **reads) -> TrainingWorld:
    spec = ModelTrainingSpec.model_validate(obj["spec"])
    invalid = reads.pop("invalid", None)
    if "retention_error" not in reads:  # what observe reads once a run has ended
        reads = {"layout": ([], []), "deployments": [], **reads}
    return TrainingWorld(obj, spec, invalid, reads.pop("store_ok", True),
                         {j["metadata"]["name"]: j for j in jobs}, ended or {}, NOW, **reads)


def conditions(plan) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in plan.conditions}


def events(plan) -> list[tuple[str, str]]:
    return [e[:2] for e in plan.events([], None)]


# ----------------------------------------------------------------------------- starting runs

def test_a_new_training_starts_its_first_run_at_version_one():
    plan = decide.plan(world(training(), stored=[]))
    assert plan.job["metadata"]["name"] == "churn-v1" and plan.job["kind"] == "Job"
    assert plan.status["runs"] == [{"version": 1, "job": "churn-v1", "trigger": "Created", "generation": 1,
                                    "startTime": NOW, "result": "Running"}]
    assert plan.status["nextVersion"] == 2 and plan.status["currentRun"] == "churn-v1"
    assert plan.status["phase"] == "Running"
    assert conditions(plan)["Reconciling"] == ("True", "RunInProgress")
    assert events(plan) == [("Normal", "RunStarted")]


def test_a_run_never_reuses_a_version_the_store_holds():
    plan = decide.plan(world(training(), stored=[1, 2, 7]))
    assert plan.job["metadata"]["name"] == "churn-v8"


def test_a_store_that_does_not_answer_starts_nothing_and_says_so():
    plan = decide.plan(world(training(), start_problem="no run can start until the store answers: timeout"))
    assert plan.job is None and plan.status["runs"] == []
    assert conditions(plan)["Reconciling"] == ("True", "StorageUnavailable")


def test_a_spec_change_starts_a_run_of_the_new_generation():
    obj = training(generation=2, runs=[run(1, "Succeeded")], latestVersion=1, nextVersion=2)
    plan = decide.plan(world(obj, stored=[1]))
    assert plan.status["runs"][0]["trigger"] == "SpecChanged" and plan.status["runs"][0]["generation"] == 2


def test_a_suspended_or_invalid_training_starts_nothing():
    assert decide.plan(world(training(suspend=True), stored=[])).job is None
    plan = decide.plan(world(training(), stored=[], invalid="spec.estimator.class 'os.system' is not allowed"))
    assert plan.job is None
    assert conditions(plan)["Stalled"] == ("True", "InvalidSpec") and conditions(plan)["Ready"][0] == "False"


def test_a_retrain_request_during_a_run_is_queued():
    obj = training(annotations={"modelloop.dev/retrain-requested": "drift at t1"}, runs=[run(1)])
    plan = decide.plan(world(obj, [job(1)], stored=[]))
    assert plan.job is None and plan.status["queuedRequest"] == "drift at t1"
    assert conditions(plan)["Reconciling"] == ("True", "RunInProgress")


def test_a_retrain_request_with_fresh_data_trains_on_it_and_clears_the_dataset_annotation():
    annotations = {"modelloop.dev/retrain-requested": "drift at t1",
                   "modelloop.dev/retrain-dataset-uri": "s3://bucket/fresh.csv"}
    obj = training(annotations=annotations, runs=[run(1, "Succeeded")], latestVersion=1)
    plan = decide.plan(world(obj, stored=[1]))
    started = plan.status["runs"][0]
    assert started["trigger"] == "RetrainRequested" and started["reason"] == "drift at t1 (dataset s3://bucket/fresh.csv)"
    assert plan.status["handledRequest"] == "drift at t1"
    assert plan.clear_dataset_override == "s3://bucket/fresh.csv"
    args = plan.job["spec"]["template"]["spec"]["containers"][0]
    assert "s3://bucket/fresh.csv" in str(args)


def test_a_dataset_the_request_may_not_name_answers_the_request_without_a_run():
    annotations = {"modelloop.dev/retrain-requested": "drift at t1", "modelloop.dev/retrain-dataset-uri": "ftp://x/y"}
    obj = training(annotations=annotations, runs=[run(1, "Succeeded")], latestVersion=1)
    assert not decide.start_due(obj, ModelTrainingSpec.model_validate(obj["spec"]), None, obj["status"]["runs"], {})
    plan = decide.plan(world(obj))
    assert plan.job is None and plan.status["handledRequest"] == "drift at t1"
    assert events(plan) == [("Warning", "RetrainRefused")]


# ----------------------------------------------------------------------------- runs that end

def test_a_succeeded_job_whose_version_verifies_becomes_the_latest_version():
    obj = training(runs=[run(1)], nextVersion=2)
    plan = decide.plan(world(obj, [job(1, "Succeeded")], {"churn-v1": verified(1)}))
    assert plan.status["runs"][0] | {} == {**run(1, "Succeeded"), "finishTime": NOW, "metrics": {"accuracy": 0.9},
                                            "artifact": f"{OUT}/v1"}
    assert plan.status["latestVersion"] == 1 and plan.status["latestArtifact"] == f"{OUT}/v1"
    assert [r["job"] for r in plan.runs_ended] == ["churn-v1"]
    assert events(plan) == [("Normal", "RunSucceeded")]
    assert conditions(plan)["Ready"] == ("True", "VersionAvailable")


def test_a_version_that_fails_its_check_fails_the_run():
    obj = training(runs=[run(1)])
    plan = decide.plan(world(obj, [job(1, "Succeeded")], {"churn-v1": Checked(rejected="sha256 does not match")}))
    assert plan.status["runs"][0]["result"] == "Failed"
    assert plan.status["runs"][0]["message"] == "artifact v1 rejected: sha256 does not match"
    assert events(plan) == [("Warning", "RunFailed"), ("Warning", "NoVersion")]  # a Warning is posted even so


def test_a_store_that_does_not_answer_keeps_a_succeeded_run_running():
    obj = training(runs=[run(1)])
    ended = {"churn-v1": Checked(unavailable="timeout")}
    assert not decide.retention_due(ended, store_ok=True)
    plan = decide.plan(world(obj, [job(1, "Succeeded")], ended))
    assert plan.status["runs"][0]["result"] == "Running" and plan.runs_ended == [] and plan.retention is None
    assert conditions(plan)["Reconciling"] == ("True", "StorageUnavailable")


def test_a_failed_job_fails_its_run_with_the_trainers_message():
    plan = decide.plan(world(training(runs=[run(1)]), [job(1, "Failed")], {"churn-v1": "exit code 2: bad target"}))
    assert plan.status["runs"][0]["message"] == "exit code 2: bad target"
    assert plan.status["phase"] == "Failed" and conditions(plan)["Ready"] == ("False", "NoVersion")


def test_a_job_the_status_does_not_know_is_adopted():
    plan = decide.plan(world(training(runs=[run(1, "Succeeded")], latestVersion=1), [job(1, "Succeeded"), job(2)]))
    assert [(r["version"], r["result"]) for r in plan.status["runs"]] == [(2, "Running"), (1, "Succeeded")]
    assert plan.job is None


def test_finished_jobs_are_cleaned_up_but_the_newest_recorded_one():
    runs = [run(3, "Succeeded"), run(2, "Failed"), run(1, "Succeeded")]
    jobs = {j["metadata"]["name"]: j for j in (job(1, "Succeeded"), job(2, "Failed"), job(3, "Succeeded"))}
    assert decide.jobs_to_delete(jobs, runs) == ["churn-v1", "churn-v2"]


# ----------------------------------------------------------------------------- retention

def test_retention_runs_once_a_run_ends_and_never_deletes_what_a_deployment_serves():
    obj = training(runs=[run(4)] + [run(v, "Succeeded", artifact=f"{OUT}/v{v}") for v in (3, 2, 1)], latestVersion=3)
    served = {"metadata": {"name": "web"}, "spec": {"model": {"fromTraining": "churn"}}, "status": {"modelVersion": 1}}
    plan = decide.plan(world(obj, [job(4, "Succeeded")], {"churn-v4": verified(4)}, layout=([1, 2, 3, 4], []),
                             deployments=[served]))
    assert plan.retention.deletions == [2] and plan.retention.protected[1] == "ModelDeployment web serves it"
    status = plan.status
    pruned, retention_events = decide.settle_retention(plan.retention, status, None, None, NOW)
    assert pruned == [2] and status["storedVersions"] == [1, 3, 4]
    assert [r.get("prunedTime") for r in status["runs"]] == [None, None, NOW, None]
    assert [e[:2] for e in plan.events(retention_events, None)][:2] == [("Normal", "RunSucceeded"),
                                                                         ("Normal", "VersionsPruned")]


def test_retention_whose_reads_failed_is_skipped_with_a_warning():
    obj = training(runs=[run(1)])
    plan = decide.plan(world(obj, [job(1, "Succeeded")], {"churn-v1": verified(1)}, retention_error="list denied"))
    assert plan.retention is None
    assert plan.run_events[-1] == ("Warning", "PruneFailed", "retention skipped: list denied")


def test_a_failed_deletion_leaves_status_with_what_the_store_then_holds():
    r = decide.Retention(OUT, 1, [1, 2, 3], [1, 2], [1, 2], {})
    status = {"runs": [run(3, "Succeeded", artifact=f"{OUT}/v3"), run(1, "Succeeded", artifact=f"{OUT}/v1")]}
    pruned, retention_events = decide.settle_retention(r, status, "cannot delete version 2", [2, 3], NOW)
    assert pruned == [1] and status["storedVersions"] == [2, 3]
    assert [e[1] for e in retention_events] == ["PruneFailed", "VersionsPruned"]
    assert decide.settle_retention(r, {}, "cannot delete version 1", None, NOW) == ([], [retention_events[0][:2] + (
        "cannot delete version 1; retention runs again after the next run",)])


# ----------------------------------------------------------------------------- events

def test_a_condition_that_changes_without_a_decision_is_posted_and_one_a_decision_said_is_not():
    quiet = training(runs=[run(1, "Succeeded")], latestVersion=1)
    plan = decide.plan(world(quiet))
    assert plan.job is None and events(plan) == [("Normal", "VersionAvailable")]  # Ready appeared
    assert decide.plan(world(quiet)).events([], plan.conditions) == []         # and is not posted again
