"""ModelTraining controller: runs one training Job at a time and records its outcome.

Level-based: every reconcile reads the resource and its Jobs, folds finished Jobs into status.runs
(the decisions are modelloop.runs, pure),
applies retention to the store when a run ended (spec.output.keepVersions), starts a run when one is
wanted (a new spec generation, or a new value of the retrain annotation) and none is running, then
writes status. Triggered by the resource's own events, by its Jobs'
events and by a periodic timer; a per-object lock keeps those from overlapping.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from .. import kube, metrics
from ..api.training import ModelTrainingSpec
from ..artifacts import version_under
from ..config import LABEL_MANAGED_BY, MANAGER, SETTINGS
from ..names import API_VERSION, LABEL_TRAINING, LABEL_VERSION, RETRAIN_ANNOTATION, RETRAIN_DATASET_ANNOTATION, TRAINING
from ..reasons import RunTrigger as Trigger, TrainingEvent as Event
from ..render.training import effective_spec, job_name, render_job
from ..runs import (
    adopted_run, dataset_override, fold_failed, fold_succeeded, job_failure_message, job_outcome, leftovers_to_remove,
    next_version, phase_of, protected_versions, run_event, training_conditions, versions_to_prune, wanted_trigger,
)
from ..status import merge_conditions, transition_events
from ..training.errors import SpecError
from ..training.estimator import build_estimator
from . import storage


API = API_VERSION
KIND = TRAINING.kind
FINISHED_JOBS_KEPT = 1


# ----------------------------------------------------------------------------- reconcile

def reconcile(namespace: str, name: str, body: Any = None) -> None:
    kube.converge(KIND, namespace, name, _reconcile, body)


def _reconcile(obj: dict | None) -> None:
    if not kube.reconcilable(obj):
        return
    md = obj["metadata"]
    namespace, name = md["namespace"], md["name"]
    generation = md.get("generation", 1)
    status: dict[str, Any] = dict(obj.get("status") or {})
    runs: list[dict] = [dict(r) for r in status.get("runs") or ()]
    annotations = md.get("annotations") or {}
    request = annotations.get(RETRAIN_ANNOTATION)
    events: list[tuple[str, str, str]] = []

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

    # 1. Adopt a Job the status does not know (the operator stopped between creating it and writing status).
    known = {r["job"] for r in runs}
    for jname, job in sorted(jobs.items(), key=lambda kv: int(kv[1]["metadata"]["labels"].get(LABEL_VERSION, 0))):
        if jname not in known and not job["metadata"].get("deletionTimestamp"):
            runs.insert(0, adopted_run(job, generation))

    # 2. Fold finished Jobs into their runs.
    finished: list[dict] = []
    store_problem = None
    for run in runs:
        if run["result"] != "Running":
            continue
        job = jobs.get(run["job"])
        outcome = job_outcome(job) if job else "Failed"
        if outcome is None:
            continue
        if outcome == "Succeeded" and spec is not None:
            # The run has just written this version: whatever was remembered under its URI is of an earlier
            # object (a version deleted, then written again: a recreated training, a wiped bucket).
            storage.forget(spec.output.uri, run["version"])
            try:
                meta = storage.verified_metadata(namespace, spec.output.uri, run["version"], credentials)
            except Exception as e:  # noqa: BLE001 - a bad artifact fails the run, never the operator
                if storage.store_unavailable(e):  # the version may well be there: the run is not over yet
                    store_problem = (f"run {run['job']} succeeded; its version {run['version']} cannot be checked "
                                     f"until the store answers: {e}")[:1024]
                    continue
                fold_failed(run, f"artifact v{run['version']} rejected: {e}", kube.rfc3339())
            else:
                fold_succeeded(run, status, meta, kube.rfc3339())
            finished.append(run)
        else:
            pods = kube.list_("v1", "Pod", namespace, f"job-name={run['job']}") if job else []
            fold_failed(run, job_failure_message(job, pods) if job else "the training Job disappeared", kube.rfc3339())
            finished.append(run)
        events.append(run_event(run, status))

    # 3. Retention: once a run has ended, versions beyond spec.output.keepVersions leave the store.
    if finished and store_ok:
        _apply_retention(obj, spec, status, runs, credentials, events)

    # 4. Start a run when one is wanted and none is running.
    running = any(r["result"] == "Running" for r in runs)
    trigger = wanted_trigger(generation, runs, request, status.get("handledRequest"))
    queued = None
    if trigger and running:
        queued = request if trigger == Trigger.RETRAIN_REQUESTED else None
    elif trigger and spec is not None and not invalid and not spec.suspend:
        fresh, refused = dataset_override(trigger, annotations)
        if refused:  # the request is answered, without a run: training on other data than asked is no answer
            status["handledRequest"] = request
            events.append(("Warning", Event.RETRAIN_REFUSED, f"retrain request refused: {refused}"))
        else:
            try:
                stored = storage.stored_versions(spec.output.uri, credentials)
            except Exception as e:  # noqa: BLE001 - reported in status; the next reconcile tries again
                if not storage.store_unavailable(e):
                    raise
                stored = None
                store_problem = f"no run can start until the store answers: {e}"[:1024]
            if stored is not None:
                version = next_version(status, stored)
                job = render_job(obj, effective_spec(spec, fresh), version, trigger)
                try:
                    kube.create(job)
                except kube.Conflict:
                    pass  # created by an earlier attempt: the run is the same
                run = {"version": version, "job": job_name(name, version), "trigger": trigger,
                       "generation": generation, "startTime": kube.rfc3339(), "result": "Running"}
                if trigger == Trigger.RETRAIN_REQUESTED:
                    run["reason"] = request[:1024]
                if fresh:
                    run["reason"] = f"{run.get('reason', '')} (dataset {fresh})".strip()
                runs.insert(0, run)
                status["nextVersion"] = version + 1
                if request:
                    status["handledRequest"] = request  # a run trains the newest spec: it answers any pending one
                events.append(("Normal", Event.RUN_STARTED,
                               f"started run {run['job']} ({trigger}) for version {version}"))

    runs = runs[:spec.history_limit if spec else 10]
    conditions = merge_conditions(status.get("conditions"), training_conditions(
        phase_of(runs), runs, status.get("latestVersion"), invalid, bool(queued), store_problem), generation)
    status.update(observedGeneration=generation, phase=phase_of(runs), runs=runs, conditions=conditions,
                  currentRun=next((r["job"] for r in runs if r["result"] == "Running"), None), queuedRequest=queued)
    kube.write_status(obj, status)
    for run in finished:  # counted once the status that records them is written
        metrics.TRAINING_RUNS.labels(namespace, name, run["result"]).inc()
        seconds = _seconds_between(run.get("startTime"), run["finishTime"])
        if seconds is not None:
            metrics.TRAINING_RUN_DURATION.labels(namespace, name, run["result"]).observe(seconds)
        for metric, value in (run.get("metrics") or {}).items() if run["result"] == "Succeeded" else ():
            metrics.TRAINING_VERSION_METRIC.labels(namespace, name, str(run["version"]), metric).set(value)
    if status.get("latestVersion"):
        metrics.TRAINING_LATEST_VERSION.labels(namespace, name).set(status["latestVersion"])
    # RunStarted already says a run is training, RunSucceeded that a version is ready: one event per thing.
    events += transition_events(obj.get("status", {}).get("conditions"), conditions, decided=bool(events))
    kube.emit_events(obj, events)
    if status.get("handledRequest") == request and RETRAIN_DATASET_ANNOTATION in annotations:
        _clear_dataset_override(namespace, name, annotations[RETRAIN_DATASET_ANNOTATION])
    _clean_up_jobs(namespace, jobs, runs)


def _apply_retention(obj: dict, spec: ModelTrainingSpec, status: dict, runs: list[dict],
                     credentials: storage.Credentials, events: list[tuple[str, str, str]]) -> None:
    """Delete the versions versions_to_prune chooses (and leftovers_to_remove's folders), then make status
    agree with the store: status.storedVersions, and runs whose version is gone lose their artifact and get
    prunedTime. A failure is a Warning event (PruneFailed); retention runs again after the next run."""
    namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
    output, keep = spec.output.uri, spec.output.keep_versions
    try:
        committed, incomplete = storage.store_layout(output, credentials)
        protected = protected_versions(name, output, status, runs, kube.list_(API, "ModelDeployment", namespace))
        # A deployment that follows `latest` may be promoting the version that was latest until this run
        # without having written it to its status yet: it stays for this pass.
        before = (obj.get("status") or {}).get("latestVersion")
        if isinstance(before, int) and before >= 1:
            protected.setdefault(before, "the latest good version until this run")
    except Exception as e:  # noqa: BLE001 - retention never fails the reconcile
        events.append(("Warning", Event.PRUNE_FAILED, f"retention skipped: {e}"[:1024]))
        return
    doomed = versions_to_prune(committed, keep, protected)
    error = None
    for version in doomed + leftovers_to_remove(incomplete, committed, protected):
        try:
            storage.delete_version(output, version, credentials)
        except Exception as e:  # noqa: BLE001 - e.g. credentials that may read and write but not delete
            error = f"cannot delete version {version} from {output}: {e}"
            break
    if error:
        events.append(("Warning", Event.PRUNE_FAILED, f"{error}; retention runs again after the next run"[:1024]))
        try:  # what is left is what the store says (a version whose metadata.json went is gone)
            committed, _ = storage.store_layout(output, credentials)
        except Exception:  # noqa: BLE001
            return  # status keeps its last view; the next pass corrects it
    kept = sorted(set(committed) - set(doomed)) if not error else committed
    pruned = sorted(set(doomed) - set(kept))
    status["storedVersions"] = kept
    now = kube.rfc3339()
    for run in runs:  # runs of an earlier spec.output.uri point elsewhere: not this store's to judge
        if (run.get("result") == "Succeeded" and run.get("version") not in kept and not run.get("prunedTime")
                and version_under(output, run.get("artifact")) == run.get("version")):
            run["prunedTime"] = now
            run.pop("artifact", None)
    for version in pruned:
        metrics.forget_training_version(namespace, name, version)
    if pruned:
        metrics.TRAINING_VERSIONS_PRUNED.labels(namespace, name).inc(len(pruned))
        newest = set(kept[-keep:])
        beyond = [f"v{v} ({protected[v]})" for v in kept if v in protected and v not in newest]
        events.append(("Normal", Event.VERSIONS_PRUNED, (
            f"deleted {_versions_text(pruned)} from {output} (keepVersions {keep}); kept {_versions_text(kept)}"
            + (f"; kept beyond keepVersions: {', '.join(beyond)}" if beyond else ""))[:1024]))


def _versions_text(versions: list[int]) -> str:
    shown = ", ".join(f"v{v}" for v in versions[:20])
    return shown + (f" and {len(versions) - 20} more" if len(versions) > 20 else "")


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


def _clean_up_jobs(namespace: str, jobs: dict[str, dict], runs: list[dict]) -> None:
    """Delete Jobs whose result is recorded, keeping the newest finished one for inspection."""
    recorded = [r["job"] for r in runs if r["result"] != "Running"]
    keep = set(recorded[:FINISHED_JOBS_KEPT]) | {r["job"] for r in runs if r["result"] == "Running"}
    in_history = {r["job"] for r in runs}
    for jname, job in jobs.items():
        finished = job_outcome(job) is not None
        if jname not in keep and finished and (jname in recorded or jname not in in_history):
            kube.delete("batch/v1", "Job", namespace, jname)


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

