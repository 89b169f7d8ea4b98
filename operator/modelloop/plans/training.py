"""A ModelTraining's reconcile, decided (pure): from what the controller observed (TrainingWorld), the runs that
ended, the versions retention deletes, the run to start, the status, the Events and the Jobs to clean up. The
decisions themselves are modelloop.runs'; this module puts them in their order.

Retention is the one decision that depends on a write: which versions a failed deletion left is known only once
the deletions ran, so the controller deletes `TrainingPlan.retention.deletions` and `settle_retention` records
the outcome in status before it is written.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from ..api.training import ModelTrainingSpec
from ..artifacts import version_under
from ..names import LABEL_VERSION, RETRAIN_ANNOTATION, RETRAIN_DATASET_ANNOTATION
from ..reasons import RunTrigger as Trigger, TrainingEvent as Event
from ..render.training import effective_spec, job_name, render_job
from ..runs import (
    adopted_run, dataset_override, fold_failed, fold_succeeded, job_outcome, leftovers_to_remove, next_version,
    phase_of, protected_versions, run_event, training_conditions, versions_to_prune, wanted_trigger,
)
from ..status import merge_conditions, transition_events

FINISHED_JOBS_KEPT = 1
DEFAULT_HISTORY = 10

EventTuple = tuple[str, str, str]


@dataclass(frozen=True)
class Checked:
    """What the store showed of the version a Succeeded Job wrote: its verified metadata, or why it is rejected, or
    that the store did not answer (the run is not over until it does)."""

    metadata: dict | None = None
    rejected: str | None = None
    unavailable: str | None = None


@dataclass(frozen=True)
class TrainingWorld:
    """Everything one reconcile reads. `ended`: for each Running run whose Job finished or disappeared, the check of
    its version (Succeeded) or why it failed. The store's layout and the namespace's ModelDeployments are read when
    retention is due (`retention_due`), the stored versions when a run may start (`start_due`)."""

    obj: dict
    spec: ModelTrainingSpec | None
    invalid: str | None                      # why no run can start: an invalid spec, an unusable store
    store_ok: bool                           # the store may be used (credentials, an allowed URI)
    jobs: Mapping[str, dict]
    ended: Mapping[str, Checked | str]
    now: str
    layout: tuple[list[int], list[int]] | None = None   # (committed, incomplete) versions
    deployments: list[dict] | None = None
    retention_error: str | None = None       # why the layout or the deployments could not be read
    stored: list[int] | None = None          # committed versions, for a run's version number
    start_problem: str | None = None         # the store did not answer that listing
    credentials: Mapping[str, str] = field(default_factory=dict, repr=False)  # for the deletions; never shown


@dataclass(frozen=True)
class Retention:
    """The versions retention deletes (in order) and what the status update after the deletions needs."""

    output: str
    keep: int
    committed: list[int]
    doomed: list[int]
    deletions: list[int]
    protected: dict[int, str]


@dataclass
class TrainingPlan:
    status: dict                                     # the status to write (retention settles storedVersions)
    conditions: list[dict]
    runs_ended: list[dict]                           # counted in metrics once the status is written
    run_events: list[EventTuple]                     # the ended runs' Events, then retention's, then start's
    start_events: list[EventTuple]
    job: dict | None = None                          # the Job of a run to start
    retention: Retention | None = None
    jobs_to_delete: list[str] = field(default_factory=list)
    clear_dataset_override: str | None = None        # the annotation's value once its request is answered

    def events(self, retention_events: list[EventTuple], old_conditions: list[dict] | None) -> list[EventTuple]:
        """Every Event of the reconcile. RunStarted already says a run is training, RunSucceeded that a version
        is ready: a condition's transition is posted only when no decision said it."""
        decided = self.run_events + retention_events + self.start_events
        return decided + transition_events(old_conditions, self.conditions, decided=bool(decided))


# ----------------------------------------------------------------------------- what observe reads

def adopt(runs: list[dict], jobs: Mapping[str, dict], generation: int) -> list[dict]:
    """status.runs (copied) with a run for each Job the status does not know (the operator stopped between creating
    it and writing status), newest first."""
    runs = [dict(r) for r in runs]
    known = {r["job"] for r in runs}
    for jname, job in sorted(jobs.items(), key=lambda kv: int(kv[1]["metadata"]["labels"].get(LABEL_VERSION, 0))):
        if jname not in known and not job["metadata"].get("deletionTimestamp"):
            runs.insert(0, adopted_run(job, generation))
    return runs


def ending(runs: list[dict], jobs: Mapping[str, dict]) -> dict[str, str]:
    """job name -> Succeeded or Failed, for the Running runs whose Job finished (a Job gone has failed)."""
    out = {}
    for run in runs:
        if run["result"] == "Running":
            job = jobs.get(run["job"])
            outcome = job_outcome(job) if job else "Failed"
            if outcome is not None:
                out[run["job"]] = outcome
    return out


def _settles(end: Checked | str) -> bool:
    return not (isinstance(end, Checked) and end.unavailable)


def retention_due(ended: Mapping[str, Checked | str], store_ok: bool) -> bool:
    """Retention runs once a run has ended (a run whose version the store could not show has not)."""
    return store_ok and any(_settles(end) for end in ended.values())


def start_due(obj: dict, spec: ModelTrainingSpec | None, invalid: str | None, runs: list[dict],
              ended: Mapping[str, Checked | str]) -> bool:
    """Whether a run may start once the ended runs are folded: the stored versions are then read."""
    if spec is None or invalid or spec.suspend:
        return False
    if any(r["result"] == "Running" and not (r["job"] in ended and _settles(ended[r["job"]])) for r in runs):
        return False
    md = obj["metadata"]
    annotations = md.get("annotations") or {}
    trigger = wanted_trigger(md.get("generation", 1), runs, annotations.get(RETRAIN_ANNOTATION),
                             (obj.get("status") or {}).get("handledRequest"))
    return bool(trigger) and dataset_override(trigger, annotations)[1] is None


# ----------------------------------------------------------------------------- the plan

def plan(world: TrainingWorld) -> TrainingPlan:
    obj, spec = world.obj, world.spec
    md = obj["metadata"]
    generation = md.get("generation", 1)
    status: dict[str, Any] = dict(obj.get("status") or {})
    runs = adopt(status.get("runs") or [], world.jobs, generation)
    ended, store_problem, run_events = _fold(world, runs, status)
    pruning = None
    if ended and world.store_ok:
        pruning, skipped = retention(world, status, runs)
        run_events += skipped
    job, queued, start_events, start_problem = _start(world, status, runs)
    store_problem = start_problem or store_problem
    runs = runs[:spec.history_limit if spec else DEFAULT_HISTORY]
    conditions = merge_conditions(status.get("conditions"), training_conditions(
        phase_of(runs), runs, status.get("latestVersion"), world.invalid, bool(queued), store_problem), generation,
        world.now)
    status.update(observedGeneration=generation, phase=phase_of(runs), runs=runs, conditions=conditions,
                  currentRun=next((r["job"] for r in runs if r["result"] == "Running"), None), queuedRequest=queued)
    annotations = md.get("annotations") or {}
    answered = (status.get("handledRequest") == annotations.get(RETRAIN_ANNOTATION)
                and RETRAIN_DATASET_ANNOTATION in annotations)
    return TrainingPlan(status, conditions, ended, run_events, start_events, job, pruning,
                        jobs_to_delete(world.jobs, runs),
                        annotations[RETRAIN_DATASET_ANNOTATION] if answered else None)


def _fold(world: TrainingWorld, runs: list[dict], status: dict) -> tuple[list[dict], str | None, list[EventTuple]]:
    """Fold each ended Job into its run (and a good version into status): the runs that ended, why the store kept
    one from ending (None when it did not), and their Events."""
    ended, store_problem, events = [], None, []
    for run in runs:
        end = world.ended.get(run["job"]) if run["result"] == "Running" else None
        if end is None:
            continue
        if isinstance(end, str):
            fold_failed(run, end, world.now)
        elif end.unavailable is not None:  # the version may well be there: the run is not over yet
            store_problem = (f"run {run['job']} succeeded; its version {run['version']} cannot be checked "
                             f"until the store answers: {end.unavailable}")[:1024]
            continue
        elif end.rejected is not None:
            fold_failed(run, f"artifact v{run['version']} rejected: {end.rejected}", world.now)
        else:
            fold_succeeded(run, status, end.metadata, world.now)  # type: ignore[arg-type]
        ended.append(run)
        events.append(run_event(run, status))
    return ended, store_problem, events


def retention(world: TrainingWorld, status: dict, runs: list[dict]) -> tuple[Retention | None, list[EventTuple]]:
    """Once a run has ended, versions beyond spec.output.keepVersions leave the store: versions_to_prune's, and
    leftovers_to_remove's folders. A read that failed skips it (PruneFailed); it runs again after the next run."""
    spec, md = world.spec, world.obj["metadata"]
    assert spec is not None
    output, keep = spec.output.uri, spec.output.keep_versions
    try:
        if world.retention_error is not None or world.layout is None or world.deployments is None:
            raise RuntimeError(world.retention_error or "the store's layout was not read")
        committed, incomplete = world.layout
        protected = protected_versions(md["name"], output, status, runs, world.deployments)
    except Exception as e:  # noqa: BLE001 - retention never fails the reconcile
        return None, [("Warning", Event.PRUNE_FAILED, f"retention skipped: {e}"[:1024])]
    # A deployment that follows `latest` may be promoting the version that was latest until this run without having
    # written it to its status yet: it stays for this pass.
    before = (world.obj.get("status") or {}).get("latestVersion")
    if isinstance(before, int) and before >= 1:
        protected.setdefault(before, "the latest good version until this run")
    doomed = versions_to_prune(committed, keep, protected)
    return Retention(output, keep, committed, doomed, doomed + leftovers_to_remove(incomplete, committed, protected),
                     protected), []


def settle_retention(r: Retention, status: dict, failure: str | None, committed_after: list[int] | None,
                     now: str) -> tuple[list[int], list[EventTuple]]:
    """Make status agree with the store after the deletions: status.storedVersions, and runs whose version is gone
    lose their artifact and get prunedTime. `failure`: the deletion that failed (the others stopped there), and
    `committed_after` what the store then holds (None when it could not be read: status keeps its last view).
    The versions pruned, and the Events."""
    events: list[EventTuple] = []
    committed = r.committed
    if failure:
        events.append(("Warning", Event.PRUNE_FAILED, f"{failure}; retention runs again after the next run"[:1024]))
        if committed_after is None:
            return [], events
        committed = committed_after
    kept = sorted(set(committed) - set(r.doomed)) if not failure else committed
    pruned = sorted(set(r.doomed) - set(kept))
    status["storedVersions"] = kept
    for run in status.get("runs") or ():  # runs of an earlier spec.output.uri point elsewhere: not this store's
        if (run.get("result") == "Succeeded" and run.get("version") not in kept and not run.get("prunedTime")
                and version_under(r.output, run.get("artifact")) == run.get("version")):
            run["prunedTime"] = now
            run.pop("artifact", None)
    if pruned:
        newest = set(kept[-r.keep:])
        beyond = [f"v{v} ({r.protected[v]})" for v in kept if v in r.protected and v not in newest]
        events.append(("Normal", Event.VERSIONS_PRUNED, (
            f"deleted {versions_text(pruned)} from {r.output} (keepVersions {r.keep}); kept {versions_text(kept)}"
            + (f"; kept beyond keepVersions: {', '.join(beyond)}" if beyond else ""))[:1024]))
    return pruned, events


def versions_text(versions: list[int]) -> str:
    shown = ", ".join(f"v{v}" for v in versions[:20])
    return shown + (f" and {len(versions) - 20} more" if len(versions) > 20 else "")


def _start(world: TrainingWorld, status: dict, runs: list[dict]
           ) -> tuple[dict | None, str | None, list[EventTuple], str | None]:
    """Start a run when one is wanted (a new spec generation, a new retrain request) and none is running: (its Job,
    the request queued behind a running run, the Events, why the store kept a run from starting)."""
    obj, spec = world.obj, world.spec
    md = obj["metadata"]
    generation = md.get("generation", 1)
    annotations = md.get("annotations") or {}
    request = annotations.get(RETRAIN_ANNOTATION)
    running = any(r["result"] == "Running" for r in runs)
    trigger = wanted_trigger(generation, runs, request, status.get("handledRequest"))
    if trigger and running:
        return None, request if trigger == Trigger.RETRAIN_REQUESTED else None, [], None
    if not trigger or spec is None or world.invalid or spec.suspend:
        return None, None, [], None
    fresh, refused = dataset_override(trigger, annotations)
    if refused:  # the request is answered, without a run: training on other data than asked is no answer
        status["handledRequest"] = request
        return None, None, [("Warning", Event.RETRAIN_REFUSED, f"retrain request refused: {refused}")], None
    if world.stored is None:
        return None, None, [], world.start_problem
    version = next_version(status, world.stored)
    job = render_job(obj, effective_spec(spec, fresh), version, trigger)
    run = {"version": version, "job": job_name(md["name"], version), "trigger": trigger, "generation": generation,
           "startTime": world.now, "result": "Running"}
    if trigger == Trigger.RETRAIN_REQUESTED:
        run["reason"] = request[:1024]  # type: ignore[index]
    if fresh:
        run["reason"] = f"{run.get('reason', '')} (dataset {fresh})".strip()
    runs.insert(0, run)
    status["nextVersion"] = version + 1
    if request:
        status["handledRequest"] = request  # a run trains the newest spec: it answers any pending one
    return job, None, [("Normal", Event.RUN_STARTED, f"started run {run['job']} ({trigger}) for version {version}")], None


def jobs_to_delete(jobs: Mapping[str, dict], runs: list[dict]) -> list[str]:
    """Finished Jobs whose result is recorded (or that no run in the history knows), but the newest recorded one,
    kept for inspection."""
    recorded = [r["job"] for r in runs if r["result"] != "Running"]
    keep = set(recorded[:FINISHED_JOBS_KEPT]) | {r["job"] for r in runs if r["result"] == "Running"}
    in_history = {r["job"] for r in runs}
    return [jname for jname, job in jobs.items()
            if jname not in keep and job_outcome(job) is not None and (jname in recorded or jname not in in_history)]
