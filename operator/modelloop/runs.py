"""Training runs, decided: when a run is wanted and which version it writes, how a finished Job folds into its run
and the training's status, the conditions they give, which stored versions retention deletes. Pure: the
ModelTraining controller (controllers/training.py) reads the Jobs, the store and the deployments, and does the
writes these decide."""
from __future__ import annotations

from typing import Any

from .api.common import check_storage_uri
from .artifacts import version_under
from .names import ANNOTATION_GENERATION, ANNOTATION_TRIGGER, LABEL_VERSION, RETRAIN_DATASET_ANNOTATION
from .reasons import RunTrigger as Trigger, TrainingEvent as Event, TrainingReason as R
from .status import Cond


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
        return Trigger.CREATED
    if runs[0].get("generation") != generation:
        return Trigger.SPEC_CHANGED
    if request and request != handled:
        return Trigger.RETRAIN_REQUESTED
    return None


def next_version(status: dict, stored_versions: list[int]) -> int:
    """Versions only grow: past the status counter, every run, and anything already in the store."""
    seen = [status.get("nextVersion", 1) - 1, status.get("latestVersion") or 0,
            *[r.get("version", 0) for r in status.get("runs") or ()], *stored_versions]
    return max(seen) + 1


def protected_versions(name: str, output_uri: str, status: dict, runs: list[dict],
                       deployments: list[dict]) -> dict[int, str]:
    """The versions retention must keep, each with the first reason found: the training's latest good
    version; a running run's version; and every version a ModelDeployment of the namespace serves, rolls
    back to (lastAvailableVersion), served before (previousVersion), holds as candidate or pins, when it
    follows this training (spec.model.fromTraining), or whose URI (status.modelUri,
    status.lastAvailableUri, spec.model.uri) lies under this training's output."""
    why: dict[int, str] = {}

    def add(version: Any, reason: str) -> None:
        if isinstance(version, str) and version.isdigit():
            version = int(version)
        if isinstance(version, int) and not isinstance(version, bool) and version >= 1:
            why.setdefault(version, reason)

    add(status.get("latestVersion"), "the latest good version")
    for run in runs:
        if run.get("result") == "Running":
            add(run.get("version"), f"run {run.get('job')} is writing it")
    for dep in deployments:
        model, dst = (dep.get("spec") or {}).get("model") or {}, dep.get("status") or {}
        who = f"ModelDeployment {dep['metadata']['name']}"
        if model.get("fromTraining") == name:
            add(dst.get("modelVersion"), f"{who} serves it")
            add(dst.get("lastAvailableVersion"), f"{who} rolls back to it")
            add(model.get("version"), f"{who} pins it")
            add(dst.get("previousVersion"), f"{who} served it before")
            add(dst.get("candidateVersion"), f"{who} holds it as candidate")
        add(version_under(output_uri, dst.get("modelUri")), f"{who} serves it")
        add(version_under(output_uri, dst.get("lastAvailableUri")), f"{who} rolls back to it")
        add(version_under(output_uri, model.get("uri")), f"{who} names it in spec.model.uri")
    return why


def versions_to_prune(stored: list[int], keep: int, protected: Any) -> list[int]:
    """The stored versions retention deletes, ascending: all but the newest `keep`, never a protected one
    (protected versions are kept besides the newest `keep`, not counted in them). The newest stored version
    always stays, so version numbers keep growing from the store alone."""
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    return sorted(v for v in sorted(set(stored), reverse=True)[keep:] if v not in protected)


def leftovers_to_remove(incomplete: list[int], committed: list[int], protected: Any) -> list[int]:
    """Version folders without metadata.json that nobody will complete, ascending: below the newest
    committed version (a run's version is always above every stored one when it starts) and not
    protected (a running run, retried by its Job, replaces its own leftovers). What an interrupted
    deletion or a killed commit left behind."""
    newest = max(committed, default=0)
    return sorted(v for v in incomplete if v < newest and v not in protected)


def training_conditions(phase: str, runs: list[dict], latest: int | None, invalid: str | None,
                        queued: bool, store_problem: str | None = None) -> list[Cond]:
    """`store_problem`: why the store could not be read this time (a run cannot start, or a finished run's
    version cannot be checked yet); the controller tries again on its next reconcile."""
    last = runs[0] if runs else None
    running = bool(last and last["result"] == "Running")
    if store_problem and not invalid:
        conds = [Cond.of("Reconciling", True, R.STORAGE_UNAVAILABLE, store_problem)]
    else:
        conds = [Cond.of("Reconciling", running or queued,
                         R.RUN_IN_PROGRESS if running else (R.RUN_QUEUED if queued else R.IDLE),
                         f"run {last['job']} is training version {last['version']}" if running else "")]
    if invalid:
        conds += [Cond.of("Stalled", True, R.INVALID_SPEC, invalid),
                  Cond.of("Ready", False, R.INVALID_SPEC, invalid)]
        return conds
    conds.append(Cond.of("Stalled", False, R.VALID))
    if last and last["result"] != "Running":
        ok = last["result"] == "Succeeded"
        conds.append(Cond.of("Succeeded", ok, R.RUN_SUCCEEDED if ok else R.RUN_FAILED,
                             f"version {last['version']} trained" if ok else last.get("message", "")))
        conds.append(Cond.of("Failed", not ok, R.RUN_FAILED if not ok else R.RUN_SUCCEEDED,
                             last.get("message", "") if not ok else ""))
    if latest:
        msg = f"version {latest} is the latest good version"
        if last and last["result"] == "Failed":
            msg += f"; the last run failed: {last.get('message', '')}"
        conds.append(Cond.of("Ready", True, R.VERSION_AVAILABLE, msg))
    elif running:
        conds.append(Cond.of("Ready", False, R.TRAINING, f"first run {last['job']} in progress"))
    else:
        conds.append(Cond.of("Ready", False, R.NO_VERSION, last.get("message", "no successful run yet") if last else "no run yet"))
    return conds


def adopted_run(job: dict, generation: int) -> dict:
    """The run of a Job the status does not record. It trained the generation written on it (an edit made while
    the operator was down is then still trained); a Job from before that annotation counts as the current one."""
    md = job["metadata"]
    annotations = md.get("annotations") or {}
    try:
        trained = int(annotations[ANNOTATION_GENERATION])
    except (KeyError, ValueError):
        trained = generation
    return {"version": int(md["labels"][LABEL_VERSION]), "job": md["name"],
            "trigger": annotations.get(ANNOTATION_TRIGGER, "Unknown"), "generation": trained, "result": "Running",
            "startTime": md.get("creationTimestamp")}


def phase_of(runs: list[dict]) -> str:
    return runs[0]["result"] if runs else "Pending"


def dataset_override(trigger: str, annotations: dict[str, str]) -> tuple[str | None, str | None]:
    """(the dataset URI a retrain request brings, why it is refused): the annotation is checked like
    spec.dataset.uri, since it did not pass the API server's schema."""
    uri = annotations.get(RETRAIN_DATASET_ANNOTATION)
    if trigger != Trigger.RETRAIN_REQUESTED or not uri:
        return None, None
    try:
        return check_storage_uri(uri, f"annotation {RETRAIN_DATASET_ANNOTATION}"), None
    except ValueError as e:
        return None, str(e)


def fold_succeeded(run: dict, status: dict, meta: dict, now: str) -> None:
    """A run whose Job succeeded and whose artifact verified (`meta`, as storage.verified_metadata returns it):
    its metrics, and the training's latest version when it is the newest."""
    run.update(result="Succeeded", finishTime=now, metrics=meta["metrics"], artifact=meta["uri"])
    skipped = onnx_skipped(meta["metadata"])
    if skipped:
        run["onnxSkipped"] = skipped[:1024]
    if run["version"] >= (status.get("latestVersion") or 0):
        status.update(latestVersion=run["version"], latestArtifact=meta["uri"], metrics=meta["metrics"],
                      metric=meta["metric"])


def fold_failed(run: dict, message: str, now: str) -> None:
    run.update(result="Failed", finishTime=now, message=message[:1024])


def run_event(run: dict, status: dict) -> tuple[str, str, str]:
    """The Event of a finished run."""
    if run["result"] == "Succeeded":
        onnx = f"; no model.onnx: {run['onnxSkipped']}" if run.get("onnxSkipped") else ""
        return "Normal", Event.RUN_SUCCEEDED, f"run {run['job']} trained version {run['version']} ({_metric_text(status)}){onnx}"
    return "Warning", Event.RUN_FAILED, f"run {run['job']} failed: {run.get('message', '')}"


def _metric_text(status: dict) -> str:
    m = status.get("metric") or {}
    return f"{m.get('name')}={m.get('value'):.4g}" if m.get("value") is not None else "no metric"
