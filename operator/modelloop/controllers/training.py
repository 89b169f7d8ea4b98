"""ModelTraining controller: runs one training Job at a time and records its outcome.

Level-based: every reconcile reads the resource and its Jobs, folds finished Jobs into status.runs,
starts a run when one is wanted (a new spec generation, or a new value of the retrain annotation)
and none is running, then writes status. Triggered by the resource's own events, by its Jobs'
events and by a periodic timer; a per-object lock keeps those from overlapping.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from .. import kube, metrics
from ..api.common import check_storage_uri
from ..api.training import RETRAIN_ANNOTATION, RETRAIN_DATASET_ANNOTATION, ModelTrainingSpec
from ..config import LABEL_MANAGED_BY, MANAGER, SETTINGS
from ..render.training import LABEL_TRAINING, effective_spec, job_name, render_job
from ..status import Cond, changed_conditions, merge_conditions
from ..training.errors import SpecError
from ..training.estimator import build_estimator
from . import storage


API = "modelloop.dev/v1alpha1"
KIND = "ModelTraining"
FINISHED_JOBS_KEPT = 1


# ----------------------------------------------------------------------------- pure decisions

def job_outcome(job: dict) -> str | None:
    """Succeeded, Failed, or None while the Job runs."""
    for c in job.get("status", {}).get("conditions") or ():
        if c.get("status") == "True" and c.get("type") in ("Complete", "SuccessCriteriaMet"):
            return "Succeeded"
        if c.get("status") == "True" and c.get("type") in ("Failed", "FailureTarget"):
            return "Failed"
    return None


def job_failure_message(job: dict, pods: list[dict]) -> str:
    """The trainer's one-line reason (termination message) or, failing that, the Job's own."""
    for pod in sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp", ""), reverse=True):
        for cs in pod.get("status", {}).get("containerStatuses") or ():
            term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")
            if term and term.get("exitCode", 0) != 0:
                msg = (term.get("message") or "").strip().splitlines()
                text = msg[-1] if msg else term.get("reason", "Error")
                return f"exit code {term['exitCode']}: {text}"[:1024]
    for c in job.get("status", {}).get("conditions") or ():
        if c.get("type") in ("Failed", "FailureTarget") and c.get("status") == "True":
            return f"{c.get('reason', 'Failed')}: {c.get('message', '')}".strip(": ")[:1024]
    return "the training Job failed"


def onnx_skipped(metadata: dict) -> str | None:
    """Why a version has no model.onnx (it is served with scikit-learn only), or None when it has one."""
    onnx = metadata.get("onnx")
    if onnx is None:
        return "the version was written before modelloop exported ONNX"
    return None if onnx.get("file") else onnx.get("skipped") or "no model.onnx"


def wanted_trigger(generation: int, runs: list[dict], request: str | None, handled: str | None) -> str | None:
    """Why a new run is wanted, or None: a spec generation no run has trained yet, or a new retrain
    request (the annotation's value differs from the last one acted on)."""
    if not runs:
        return "Created"
    if runs[0].get("generation") != generation:
        return "SpecChanged"
    if request and request != handled:
        return "RetrainRequested"
    return None


def next_version(status: dict, stored_versions: list[int]) -> int:
    """Versions only grow: past the status counter, every run, and anything already in the store."""
    seen = [status.get("nextVersion", 1) - 1, status.get("latestVersion") or 0,
            *[r.get("version", 0) for r in status.get("runs") or ()], *stored_versions]
    return max(seen) + 1


def training_conditions(phase: str, runs: list[dict], latest: int | None, invalid: str | None,
                        queued: bool, store_problem: str | None = None) -> list[Cond]:
    """`store_problem`: why the store could not be read this time (a run cannot start, or a finished run's
    version cannot be checked yet); the controller tries again on its next reconcile."""
    last = runs[0] if runs else None
    running = bool(last and last["result"] == "Running")
    if store_problem and not invalid:
        conds = [Cond.of("Reconciling", True, "StorageUnavailable", store_problem)]
    else:
        conds = [Cond.of("Reconciling", running or queued,
                         "RunInProgress" if running else ("RunQueued" if queued else "Idle"),
                         f"run {last['job']} is training version {last['version']}" if running else "")]
    if invalid:
        conds += [Cond.of("Stalled", True, "InvalidSpec", invalid),
                  Cond.of("Ready", False, "InvalidSpec", invalid)]
        return conds
    conds.append(Cond.of("Stalled", False, "Valid"))
    if last and last["result"] != "Running":
        ok = last["result"] == "Succeeded"
        conds.append(Cond.of("Succeeded", ok, "RunSucceeded" if ok else "RunFailed",
                             f"version {last['version']} trained" if ok else last.get("message", "")))
        conds.append(Cond.of("Failed", not ok, "RunFailed" if not ok else "RunSucceeded",
                             last.get("message", "") if not ok else ""))
    if latest:
        msg = f"version {latest} is the latest good version"
        if last and last["result"] == "Failed":
            msg += f"; the last run failed: {last.get('message', '')}"
        conds.append(Cond.of("Ready", True, "VersionAvailable", msg))
    elif running:
        conds.append(Cond.of("Ready", False, "Training", f"first run {last['job']} in progress"))
    else:
        conds.append(Cond.of("Ready", False, "NoVersion", last.get("message", "no successful run yet") if last else "no run yet"))
    return conds


def phase_of(runs: list[dict]) -> str:
    return runs[0]["result"] if runs else "Pending"


def dataset_override(trigger: str, annotations: dict[str, str]) -> tuple[str | None, str | None]:
    """(the dataset URI a retrain request brings, why it is refused): the annotation is checked like
    spec.dataset.uri, since it did not pass the API server's schema."""
    uri = annotations.get(RETRAIN_DATASET_ANNOTATION)
    if trigger != "RetrainRequested" or not uri:
        return None, None
    try:
        return check_storage_uri(uri, f"annotation {RETRAIN_DATASET_ANNOTATION}"), None
    except ValueError as e:
        return None, str(e)


# ----------------------------------------------------------------------------- reconcile

def reconcile(namespace: str, name: str) -> None:
    kube.converge(KIND, namespace, name, _reconcile)


def _reconcile(namespace: str, name: str) -> None:
    obj = kube.get(API, KIND, namespace, name)
    if not kube.reconcilable(obj):
        return
    md = obj["metadata"]
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
    try:
        credentials = storage.credentials_from_secret(namespace, spec.storage if spec else None)
        if spec is not None:
            storage.check_allowed(spec.output.uri, "spec.output.uri")
    except storage.StorageAccessError as e:  # a Job could not read its data either: stall until it exists
        credentials, invalid = storage.ANONYMOUS, invalid or str(e)

    # 1. Adopt a Job the status does not know (the operator stopped between creating it and writing status).
    known = {r["job"] for r in runs}
    for jname, job in sorted(jobs.items(), key=lambda kv: int(kv[1]["metadata"]["labels"].get("modelloop.dev/version", 0))):
        if jname not in known and not job["metadata"].get("deletionTimestamp"):
            runs.insert(0, {"version": int(job["metadata"]["labels"]["modelloop.dev/version"]), "job": jname,
                            "trigger": job["metadata"].get("annotations", {}).get("modelloop.dev/trigger", "Unknown"),
                            "generation": generation, "result": "Running",
                            "startTime": job["metadata"].get("creationTimestamp")})

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
        meta, rejected = None, None
        if outcome == "Succeeded" and spec is not None:
            try:
                meta = storage.verified_metadata(namespace, spec.output.uri, run["version"], credentials)
            except Exception as e:  # noqa: BLE001 - a bad artifact fails the run, never the operator
                if storage.store_unavailable(e):  # the version may well be there: the run is not over yet
                    store_problem = (f"run {run['job']} succeeded; its version {run['version']} cannot be checked "
                                     f"until the store answers: {e}")[:1024]
                    continue
                rejected = e
        run["finishTime"] = kube.rfc3339()
        finished.append(run)
        if outcome == "Succeeded" and spec is not None:
            if rejected is not None:
                run.update(result="Failed", message=f"artifact v{run['version']} rejected: {rejected}"[:1024])
            else:
                run.update(result="Succeeded", metrics=meta["metrics"], artifact=meta["uri"])
                skipped = onnx_skipped(meta["metadata"])
                if skipped:
                    run["onnxSkipped"] = skipped[:1024]
                if run["version"] >= (status.get("latestVersion") or 0):
                    status.update(latestVersion=run["version"], latestArtifact=meta["uri"], metrics=meta["metrics"],
                                  metric=meta["metric"])
        else:
            pods = kube.list_("v1", "Pod", namespace, f"job-name={run['job']}") if job else []
            msg = job_failure_message(job, pods) if job else "the training Job disappeared"
            run.update(result="Failed", message=msg)
        ok = run["result"] == "Succeeded"
        events.append(("Normal" if ok else "Warning", "RunSucceeded" if ok else "RunFailed",
                       f"run {run['job']} " + (f"trained version {run['version']} ({_metric_text(status)})"
                                               + (f"; no model.onnx: {run['onnxSkipped']}" if run.get("onnxSkipped")
                                                  else "") if ok
                                               else f"failed: {run.get('message', '')}")))

    # 3. Start a run when one is wanted and none is running.
    running = any(r["result"] == "Running" for r in runs)
    trigger = wanted_trigger(generation, runs, request, status.get("handledRequest"))
    queued = None
    if trigger and running:
        queued = request if trigger == "RetrainRequested" else None
    elif trigger and spec is not None and not invalid and not spec.suspend:
        fresh, refused = dataset_override(trigger, annotations)
        if refused:  # the request is answered, without a run: training on other data than asked is no answer
            status["handledRequest"] = request
            events.append(("Warning", "RetrainRefused", f"retrain request refused: {refused}"))
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
                if trigger == "RetrainRequested":
                    run["reason"] = request[:1024]
                if fresh:
                    run["reason"] = f"{run.get('reason', '')} (dataset {fresh})".strip()
                runs.insert(0, run)
                status["nextVersion"] = version + 1
                if request:
                    status["handledRequest"] = request  # a run trains the newest spec: it answers any pending one
                events.append(("Normal", "RunStarted",
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
    for c in changed_conditions(obj.get("status", {}).get("conditions"), conditions):
        if c["type"] in ("Stalled", "Ready") and (c["status"] == "True" or c["type"] == "Ready"):
            events.append(("Warning" if c["reason"] in ("InvalidSpec", "NoVersion") else "Normal", c["reason"],
                           c["message"] or f"{c['type']} is {c['status']}"))
        elif c["type"] == "Reconciling" and c["reason"] == "StorageUnavailable":
            events.append(("Warning", c["reason"], c["message"]))
    kube.emit_events(obj, events)
    if status.get("handledRequest") == request and RETRAIN_DATASET_ANNOTATION in annotations:
        _clear_dataset_override(namespace, name, annotations[RETRAIN_DATASET_ANNOTATION])
    _clean_up_jobs(namespace, jobs, runs)


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


def _metric_text(status: dict) -> str:
    m = status.get("metric") or {}
    return f"{m.get('name')}={m.get('value'):.4g}" if m.get("value") is not None else "no metric"


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
def on_training_event(type: str, name: str, namespace: str, **_: Any) -> None:
    if type != "DELETED":
        reconcile(namespace, name)


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_MANAGED_BY: MANAGER, LABEL_TRAINING: kopf.PRESENT})
def on_job_event(labels: dict, namespace: str, **_: Any) -> None:
    reconcile(namespace, labels[LABEL_TRAINING])


@kopf.timer(API.split("/")[0], API.split("/")[1], "modeltrainings", interval=SETTINGS.resync_seconds, idle=5)
def resync(name: str, namespace: str, **_: Any) -> None:
    reconcile(namespace, name)

