"""ModelTraining controller: runs one training Job at a time and records its outcome.

Level-based, in one shape (docs/architecture.md, "One reconcile shape"): `observe` reads the resource, its Jobs,
and what the store holds of the versions runs just wrote; `plans.training.plan` decides (it folds finished Jobs into
status.runs, chooses the versions retention deletes and the run to start, with modelloop.runs' decisions); `act`
writes: the store deletions (spec.output.keepVersions), the new run's Job, the status, then the metrics, Events and
clean-up that follow what the status records. Triggered by the resource's own events, by its Jobs' events and by a
periodic timer; a per-object lock keeps those from overlapping.
"""
from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from .. import kube, metrics
from ..api.training import ModelTrainingSpec
from ..config import LABEL_MANAGED_BY, MANAGER, SETTINGS
from ..names import API_VERSION, LABEL_TRAINING, RETRAIN_DATASET_ANNOTATION, TRAINING
from ..plans import training as decide
from ..plans.training import Checked, TrainingPlan, TrainingWorld
from ..runs import job_failure_message
from ..training.errors import SpecError
from ..training.estimator import build_estimator
from . import storage


API = API_VERSION
KIND = TRAINING.kind


# ----------------------------------------------------------------------------- reconcile

def reconcile(namespace: str, name: str, body: Any = None) -> None:
    kube.converge(KIND, namespace, name, _reconcile, body)


def _reconcile(obj: dict | None) -> None:
    if not kube.reconcilable(obj):
        return
    world = observe(obj)
    act(world, decide.plan(world))


def observe(obj: dict) -> TrainingWorld:
    """Every read of one reconcile: the spec's validity, the Jobs, the credentials, the versions runs just wrote;
    the store's layout and the namespace's deployments when retention is due, the stored versions when a run may
    start."""
    md = obj["metadata"]
    namespace, name = md["namespace"], md["name"]
    spec: ModelTrainingSpec | None
    try:
        spec = ModelTrainingSpec.model_validate(obj["spec"])
    except ValidationError as e:  # the CRD schema should have caught it; report, never crash
        spec, invalid = None, f"spec is invalid: {e.errors()[0]['msg']}"
    else:
        invalid = _validate_estimator(spec)
    jobs = {j["metadata"]["name"]: j for j in kube.list_("batch/v1", "Job", namespace, f"{LABEL_TRAINING}={name}")}
    store_ok = spec is not None
    try:
        credentials = storage.credentials_from_secret(namespace, spec.storage if spec else None)
        if spec is not None:
            storage.check_allowed(spec.output.uri, "spec.output.uri")
    except storage.StorageAccessError as e:  # a Job could not read its data either: stall until it exists
        credentials, invalid, store_ok = storage.ANONYMOUS, invalid or str(e), False
    runs = decide.adopt((obj.get("status") or {}).get("runs") or [], jobs, md.get("generation", 1))
    ended = {run["job"]: _ended(namespace, spec, run, jobs.get(run["job"]), outcome, credentials)
             for run in runs for outcome in decide.ending([run], jobs).values()}
    world = TrainingWorld(obj, spec, invalid, store_ok, jobs, ended, kube.rfc3339(), credentials=credentials)
    if spec is not None and decide.retention_due(ended, store_ok):
        world = _observe_retention(world, spec)
    if spec is not None and decide.start_due(obj, spec, invalid, runs, ended):
        try:
            world = dataclasses.replace(world, stored=storage.stored_versions(spec.output.uri, credentials))
        except Exception as e:  # noqa: BLE001 - reported in status; the next reconcile tries again
            if not storage.store_unavailable(e):
                raise
            world = dataclasses.replace(world, start_problem=f"no run can start until the store answers: {e}"[:1024])
    return world


def _ended(namespace: str, spec: ModelTrainingSpec | None, run: dict, job: dict | None, outcome: str,
           credentials: storage.Credentials) -> Checked | str:
    """What became of a run whose Job ended: its version as the store shows it, or why the run failed."""
    if outcome == "Succeeded" and spec is not None:
        # The run has just written this version: whatever was remembered under its URI is of an earlier object (a
        # version deleted, then written again: a recreated training, a wiped bucket).
        storage.forget(spec.output.uri, run["version"])
        try:
            return Checked(metadata=storage.verified_metadata(namespace, spec.output.uri, run["version"], credentials))
        except Exception as e:  # noqa: BLE001 - a bad artifact fails the run, never the operator
            return Checked(unavailable=str(e)) if storage.store_unavailable(e) else Checked(rejected=str(e))
    if job is None:
        return "the training Job disappeared"
    return job_failure_message(job, kube.list_("v1", "Pod", namespace, f"job-name={run['job']}"))


def _observe_retention(world: TrainingWorld, spec: ModelTrainingSpec) -> TrainingWorld:
    try:
        layout = storage.store_layout(spec.output.uri, world.credentials)
        deployments = kube.list_(API, "ModelDeployment", world.obj["metadata"]["namespace"])
    except Exception as e:  # noqa: BLE001 - retention never fails the reconcile
        return dataclasses.replace(world, retention_error=str(e))
    return dataclasses.replace(world, layout=layout, deployments=deployments)


def act(world: TrainingWorld, plan: TrainingPlan) -> None:
    """The writes, in order: the store deletions, the new run's Job, the status; then what follows what the status
    records (metrics, Events, the answered dataset annotation, the Jobs no longer needed)."""
    obj = world.obj
    namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
    retention_events = _prune(world, plan)
    if plan.job is not None:
        try:
            kube.create(plan.job)
        except kube.Conflict:
            pass  # created by an earlier attempt: the run is the same
    kube.write_status(obj, plan.status)
    _count(namespace, name, plan)
    kube.emit_events(obj, plan.events(retention_events, (obj.get("status") or {}).get("conditions")))
    if plan.clear_dataset_override is not None:
        _clear_dataset_override(namespace, name, plan.clear_dataset_override)
    for job in plan.jobs_to_delete:
        kube.delete("batch/v1", "Job", namespace, job)


def _prune(world: TrainingWorld, plan: TrainingPlan) -> list[tuple[str, str, str]]:
    """Delete the versions retention chose, stopping at the first failure (e.g. credentials that may read and write
    but not delete), then record in status what the store holds; retention's Events."""
    r = plan.retention
    if r is None:
        return []
    failure, committed_after = None, None
    for version in r.deletions:
        try:
            storage.delete_version(r.output, version, world.credentials)
        except Exception as e:  # noqa: BLE001 - reported as PruneFailed; retention runs again after the next run
            failure = f"cannot delete version {version} from {r.output}: {e}"
            break
    if failure:
        try:  # what is left is what the store says (a version whose metadata.json went is gone)
            committed_after, _ = storage.store_layout(r.output, world.credentials)
        except Exception:  # noqa: BLE001 - status keeps its last view; the next pass corrects it
            committed_after = None
    pruned, events = decide.settle_retention(r, plan.status, failure, committed_after, world.now)
    namespace, name = world.obj["metadata"]["namespace"], world.obj["metadata"]["name"]
    for version in pruned:
        metrics.forget_training_version(namespace, name, version)
    if pruned:
        metrics.TRAINING_VERSIONS_PRUNED.labels(namespace, name).inc(len(pruned))
    return events


def _count(namespace: str, name: str, plan: TrainingPlan) -> None:
    """The metrics of the runs that ended, counted once the status that records them is written."""
    for run in plan.runs_ended:
        metrics.TRAINING_RUNS.labels(namespace, name, run["result"]).inc()
        seconds = _seconds_between(run.get("startTime"), run["finishTime"])
        if seconds is not None:
            metrics.TRAINING_RUN_DURATION.labels(namespace, name, run["result"]).observe(seconds)
        for metric, value in (run.get("metrics") or {}).items() if run["result"] == "Succeeded" else ():
            metrics.TRAINING_VERSION_METRIC.labels(namespace, name, str(run["version"]), metric).set(value)
    if plan.status.get("latestVersion"):
        metrics.TRAINING_LATEST_VERSION.labels(namespace, name).set(plan.status["latestVersion"])


def _seconds_between(start: str | None, end: str) -> float | None:
    """Seconds from one RFC 3339 time to another (None when the start is unknown or malformed)."""
    try:
        return max(0.0, (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds())  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _clear_dataset_override(namespace: str, name: str, used: str) -> None:
    """Remove the dataset annotation of a request that has been answered, unless a new request has
    meanwhile replaced it (the JSON patch tests the value first)."""
    path = "/metadata/annotations/" + RETRAIN_DATASET_ANNOTATION.replace("~", "~0").replace("/", "~1")
    try:
        kube.patch(API, KIND, namespace, name, [{"op": "test", "path": path, "value": used},
                                                {"op": "remove", "path": path}], merge=False)
    except ApiException as e:
        if e.status not in (404, 422):  # 422: the value changed (a new request); 404: the resource is gone
            raise


def _validate_estimator(spec: ModelTrainingSpec) -> str | None:
    """Construct the estimator before any Job starts: a bad class or parameter is reported at once."""
    try:
        build_estimator(spec.estimator.class_name, spec.estimator.params or {})
    except SpecError as e:
        return str(e)
    return None


# ----------------------------------------------------------------------------- kopf wiring

@kopf.on.event(API.split("/")[0], API.split("/")[1], "modeltrainings")
def on_training_event(type: str, body: Any, name: str, namespace: str, **_: Any) -> None:
    if type != "DELETED" and not kube.own_write(body):  # its own status write: that reconcile saw everything
        reconcile(namespace, name, body)


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_MANAGED_BY: MANAGER, LABEL_TRAINING: kopf.PRESENT})
def on_job_event(body: Any, labels: dict, namespace: str, **_: Any) -> None:
    if not kube.own_write(body):  # the echo of the create: the reconcile that created it recorded the run
        reconcile(namespace, labels[LABEL_TRAINING])


@kopf.timer(API.split("/")[0], API.split("/")[1], "modeltrainings", interval=SETTINGS.resync_seconds,
            idle=SETTINGS.resync_seconds)
def resync(name: str, namespace: str, **_: Any) -> None:
    reconcile(namespace, name)

