"""A DriftMonitor's check, decided (pure): from what the check observed (DriftWorld: the deployment, its serving
version, the measured window, the live performance, the training to retrain), the status to write once, the
Events, the retrain request to record and deliver, where the next window starts. The decisions are modelloop.retrain's
and modelloop.performance's; the drift report itself is measured by the controller with the drift engine.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..api.drift import DriftMonitorSpec
from ..meta import rfc3339
from ..performance import Verdict, assess, deciding_metric
from ..reasons import DriftEvent as Event, DriftReason as R
from ..report import REPORT_FILE, report_location
from ..retrain import retrain_allowed, retrain_decision, retrain_outcome, summarize
from ..status import Cond, changed_conditions, merge_conditions

EventTuple = tuple[str, str, str]


class CheckError(Exception):
    """The check could not run: reported as Ready=False and counted in the error metric."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


class Waiting(CheckError):
    """Nothing to check yet, and nothing wrong (a rollout in progress): Ready stays True."""


@dataclass(frozen=True)
class Serving:
    """The version a deployment serves, its metadata (reference sketches, schema, training dataset)
    and the credentials to read its store."""

    version: int
    metadata: dict
    credentials: Any = field(repr=False)
    base: str  # the model's output URI: versions v<N>/ and the monitors' reports/ below it


@dataclass(frozen=True)
class Window:
    """A measured window: the drift report once the window is big enough to decide (None: not yet), its rows, where
    the next window starts once this one is decided (None: here, or keep the baseline), the merged live sketch, and
    the pods that did not answer."""

    report: dict | None
    samples: int
    next_baseline: dict[str, dict] | None = None
    sketch: dict | None = None
    pod_errors: tuple[str, ...] = ()


@dataclass(frozen=True)
class DriftWorld:
    """Everything one check reads. `problem`: why the check stopped (a CheckError, or Waiting); with `serving` None
    it stopped before the serving version was known, else while measuring the window. `performance`: the servers'
    live performance (with spec.feedback on the deployment), or why none answered."""

    obj: dict
    spec: DriftMonitorSpec
    now: datetime
    dep: dict | None = None
    serving: Serving | None = None
    baseline_version: int | None = None      # the version the monitor's baseline belongs to
    problem: CheckError | None = None
    window: Window | None = None
    performance: dict | None = None
    performance_error: str | None = None
    training_name: str | None = None
    training: dict | None = None             # the ModelTraining to retrain, read when a retrain may be decided
    delivered: str | None = None             # the retrain request this monitor's daemon has delivered


@dataclass
class DriftPlan:
    status: dict
    events: list[EventTuple]
    error_reason: str | None = None              # counted in the error metric
    report: dict | None = None                   # the decided drift report (exported, drawn)
    verdict: Verdict | None = None               # the performance verdict (exported)
    next_baseline: dict[str, dict] | None = None  # where the next window starts (None: the baseline stays)
    retrains: int = 0                            # retrain requests recorded, counted once written
    deliver: dict | None = None                  # the request to write to the training after the status


def plan(world: DriftWorld) -> DriftPlan:
    md = world.obj["metadata"]
    status: dict[str, Any] = dict(world.obj.get("status") or {})
    p = DriftPlan(status, [])
    conds = _checked(world, p) if world.serving is not None else []
    if world.problem is not None:
        conds = _problem(world, p)
    conditions = merge_conditions(status.get("conditions"), conds, md.get("generation"), rfc3339(world.now))
    status.update(observedGeneration=md.get("generation"), conditions=conditions)
    p.events += transition_events(world.obj, status, conditions)
    if world.serving is not None:
        status["report"] = {"uri": f"{report_location(world.serving.base, md['name'])}/{REPORT_FILE}"}
    _delivery(world, p)
    return p


def _problem(world: DriftWorld, p: DriftPlan) -> list[Cond]:
    e = world.problem
    assert e is not None
    if isinstance(e, Waiting):
        p.status.update(lastCheckTime=rfc3339(world.now))
        return [Cond.of("Ready", True, e.reason, e.message), Cond.of("DriftDetected", False, R.UNDECIDED, e.message)]
    p.error_reason = e.reason
    p.status.update(phase="Error", lastCheckTime=rfc3339(world.now))
    return [Cond.of("Ready", False, e.reason, e.message),
            Cond.of("DriftDetected", False, R.UNDECIDED, f"no decision: {e.message}")]


def _checked(world: DriftWorld, p: DriftPlan) -> list[Cond]:
    """The check of the serving version: what became of the last retrain, a new version's fresh window, then the
    window's decision and the live performance's verdict (each may request a retrain)."""
    serving, status = world.serving, p.status
    assert serving is not None and world.dep is not None
    outcome = retrain_outcome(status, world.dep.get("status") or {})
    if outcome is not None:  # the retrain this monitor asked for did not help: the live analysis said so
        status["retrainOutcome"] = outcome
        p.events.append(("Warning", Event.RETRAIN_DID_NOT_HELP, outcome["message"]))
    if serving.version != world.baseline_version:  # a new version serves: the window restarts against its reference
        if world.baseline_version is not None:
            p.events.append(("Normal", Event.REFERENCE_CHANGED, f"now watching version {serving.version}"))
        p.next_baseline = {}
        status.update(consecutiveDrifted=0)
    if world.window is None:
        return []
    conds = _window(world, p, world.window)
    if (world.dep.get("spec") or {}).get("feedback"):
        conds.append(_performance(world, p))
    return conds


def _window(world: DriftWorld, p: DriftPlan, window: Window) -> list[Cond]:
    spec, status, version = world.spec, p.status, world.serving.version  # type: ignore[union-attr]
    if window.next_baseline is not None:
        p.next_baseline = window.next_baseline
    report, samples = window.report, window.samples
    status.update(modelVersion=version, samples=samples, lastCheckTime=rfc3339(world.now))
    if report is None or report["status"] != "ok":
        msg = (report or {}).get("message") or f"{samples} new rows of {spec.min_samples} needed; nothing decided"
        status.update(phase="InsufficientData")
        return [Cond.of("Ready", True, R.INSUFFICIENT_SAMPLES, msg), Cond.of("DriftDetected", False, R.UNDECIDED, msg)]
    drifted = bool(report["dataset_drift"])
    consecutive = (status.get("consecutiveDrifted") or 0) + 1 if drifted else 0
    summary = summarize(report)
    status.update(phase="Drifted" if drifted else "Watching", datasetDrift=drifted,
                  driftShare=round(report["drift_share"], 4), consecutiveDrifted=consecutive,
                  features=[{"name": f["name"], "test": f["test"], "score": round(f["score"] or 0.0, 6),
                             **({"threshold": f["threshold"]} if f.get("threshold") is not None else {}),
                             **({"pValue": f["p_value"]} if f.get("p_value") is not None else {}),
                             "drifted": bool(f["drifted"])} for f in report["features"]])
    p.report = report
    if drifted and spec.retrain_on in ("drift", "either"):
        maybe_retrain(world, p, consecutive, summary)
    return [Cond.of("Ready", True, R.CHECKED, f"checked {samples} rows against version {version}"),
            Cond.of("DriftDetected", drifted, R.DATASET_DRIFT if drifted else R.NO_DRIFT, summary)]


def verdict_of(spec: DriftMonitorSpec, serving: Serving, live: dict) -> Verdict:
    metric = deciding_metric(spec.performance, (serving.metadata.get("metric") or {}).get("name"),
                             serving.metadata.get("task") == "classification")
    return assess(spec.performance, live, serving.version, serving.metadata.get("metrics") or {}, metric)


def _performance(world: DriftWorld, p: DriftPlan) -> Cond:
    """The PerformanceDegraded condition from the servers' join of predictions and labels, status.performance, and
    the events of a drop or a recovery (on decided verdicts only: a drop, then a recovery however many undecided
    checks, a new version's first minutes or a store that did not answer, came between them)."""
    if world.performance is None:
        return Cond.of("PerformanceDegraded", False, R.FEEDBACK_UNAVAILABLE, world.performance_error or "")
    status = p.status
    verdict = p.verdict = verdict_of(world.spec, world.serving, world.performance)  # type: ignore[arg-type]
    status["performance"] = verdict.entries
    if verdict.decided:
        if verdict.dropped and not status.get("performanceDropped"):
            p.events.append(("Warning", Event.PERFORMANCE_DROPPED, verdict.message))
        elif not verdict.dropped and status.get("performanceDropped"):
            p.events.append(("Normal", Event.PERFORMANCE_RECOVERED, verdict.message))
        status["performanceDropped"] = verdict.dropped
    reason = (R.PERFORMANCE_DROPPED if verdict.dropped else R.PERFORMANCE_HOLDS if verdict.decided
              else R.PERFORMANCE_UNDECIDED)
    if verdict.dropped and world.spec.retrain_on in ("performance", "either"):
        maybe_retrain(world, p, world.spec.consecutive, verdict.message)
    return Cond.of("PerformanceDegraded", verdict.dropped, reason, verdict.message)


def retrain_considered(world: DriftWorld) -> bool:
    """Whether this check may decide a retrain (the training to retrain is then read): a decided window that drifted,
    or a significant drop of live performance, each when spec.retrainOn counts it."""
    spec, window = world.spec, world.window
    if window is None or world.serving is None:
        return False
    drifted = bool(window.report and window.report["status"] == "ok" and window.report["dataset_drift"])
    if drifted and spec.retrain_on in ("drift", "either"):
        return True
    return (world.performance is not None and spec.retrain_on in ("performance", "either")
            and bool(((world.dep or {}).get("spec") or {}).get("feedback"))
            and verdict_of(spec, world.serving, world.performance).dropped)


def maybe_retrain(world: DriftWorld, p: DriftPlan, consecutive: int, why_text: str) -> None:
    """Record a retrain request in status when retrain_decision allows it (drift that persisted, or a significant
    drop of live performance), else say why not in an event."""
    spec, md, status = world.spec, world.obj["metadata"], p.status
    name, training = md["name"], world.training
    go, why = retrain_decision(spec, consecutive, status.get("lastRetrainTime"), training, world.now, name,
                               md.get("labels") or {}, (world.dep or {}).get("status"))
    if go:
        # Recorded in status first, delivered after the write: a failed or conflicting write requests nothing, and
        # a request recorded is delivered even across a restart.
        request = {"training": world.training_name, "value": f"DriftMonitor {name} at {rfc3339(world.now)}: "
                   f"{why_text}"[:1000], "delivered": False}
        if spec.action.dataset_uri:
            request["datasetUri"] = spec.action.dataset_uri
        status.update(lastRetrainTime=rfc3339(world.now), retrains=(status.get("retrains") or 0) + 1,
                      consecutiveDrifted=0, retrainRequest=request)
        p.retrains += 1
        p.events.append(("Normal", Event.RETRAIN_REQUESTED, f"requested a retrain of {world.training_name}: {why_text}"))
    elif spec.action.type == "retrain" and consecutive >= spec.consecutive:
        denied = training is not None and not retrain_allowed(training, name, md.get("labels") or {})
        p.events.append(("Warning", Event.RETRAIN_DENIED, why) if denied else ("Normal", Event.RETRAIN_SKIPPED, why))


def _delivery(world: DriftWorld, p: DriftPlan) -> None:
    """A request recorded and not yet marked delivered: marked in this check's status when this daemon delivered it
    (after the write that recorded it), else delivered after this check's status write (a new request, or one the
    operator recorded before it restarted) and marked by the next check. The training acts once per value, so a
    second delivery of the same value changes nothing."""
    request = p.status.get("retrainRequest")
    if not request or request.get("delivered"):
        return
    if world.delivered == request["value"]:
        p.status["retrainRequest"] = {**request, "delivered": True}
    else:
        p.deliver = request


def transition_events(obj: dict, status: dict, conditions: list[dict]) -> list[EventTuple]:
    """The events of what changed since the last written status: drift detected or resolved, Ready flipped."""
    events = []
    was, now_drift = (obj.get("status") or {}).get("datasetDrift"), status.get("datasetDrift")
    drift_message = next(c["message"] for c in conditions if c["type"] == "DriftDetected")
    if now_drift and not was:
        events.append(("Warning", Event.DRIFT_DETECTED, drift_message))
    elif was and now_drift is False:
        events.append(("Normal", Event.DRIFT_RESOLVED, drift_message))
    for c in changed_conditions(obj.get("status", {}).get("conditions"), conditions):
        if c["type"] == "Ready":
            events.append(("Normal" if c["status"] == "True" else "Warning", c["reason"], c["message"]))
    return events

