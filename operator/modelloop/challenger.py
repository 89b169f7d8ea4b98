"""The life of a challenger (pure): started beside the champion, analysed on live traffic, promoted or rejected,
and the new champion watched after its promotion (docs/challenger.md). The controller reads the world (the
challenger Deployment's rollout, the servers' counters, the paired records), calls these functions on the
reconcile's Rollout, then applies children and writes status; the statistics are modelloop.analysis's.

Phases of `status.rollout.phase`:
  Stable     one version serves (and no analysis runs)
  Shadowing  the challenger gets copies of the champion's requests; its answers go nowhere
  Canary     the challenger serves a share of users (by replicas, or by HTTPRoute weights), step by step
  Promoting  the champion Deployment rolls out the challenger's version; the challenger keeps running until then
  Watching   the new champion is watched against the numbers the previous one showed during the analysis (error
             rate) and on its own labelled rows before the promotion (live performance)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .analysis import Analysis, Live, Paired, Served, Thresholds, analyse, canary_replicas, next_step, watch
from .api.deployment import RolloutSpec
from .meta import format_time, parse_time
from .names import ABORT_ANNOTATION, PROMOTE_ANNOTATION
from .reasons import DeploymentEvent as Event
from .render.deployment import ServedModel
from .rollout import Candidate, Rollout

LIVE = ("Shadowing", "Canary")
REJECTED_KEPT = 20


@dataclass(frozen=True)
class Evidence:
    """What the servers showed over the analysis window (or the watch): each version's own counters, and the
    two versions on the same prediction ids (None when nothing can be paired: feedback off, or a canary, whose
    rows are each served by one version), with why not."""

    champion: Served
    challenger: Served
    paired: Paired | None = None
    unpaired_reason: str | None = None
    live: dict[int, Live] | None = None  # each version's live performance on its own labelled rows (feedback on)


@dataclass(frozen=True)
class Manual:
    """The modelloop.dev/promote and modelloop.dev/abort annotations, when set."""

    promote: bool = False
    abort: bool = False


def state(r: Rollout) -> dict:
    """status.rollout, created on first use."""
    return r.status.setdefault("rollout", {})


def phase(r: Rollout) -> str:
    return (r.status.get("rollout") or {}).get("phase") or "Stable"


def challenger_model(ro: dict) -> ServedModel:
    return ServedModel(ro["challenger"], ro["challengerUri"], ro["challengerSha256"], ro.get("challengerMetadataSha256"))


# ----------------------------------------------------------------------------------------- start

def start(r: Rollout, candidate: Candidate, spec: RolloutSpec) -> None:
    """The candidate becomes the challenger beside the serving champion; its analysis window starts once its pods
    are Available."""
    ro = state(r)
    version = candidate.model.version
    ro.update(strategy=spec.strategy, phase="Shadowing" if spec.strategy == "shadow" else "Canary",
              champion=r.serving, challenger=version, challengerUri=candidate.model.uri,
              challengerSha256=candidate.model.sha256, challengerMetadataSha256=candidate.model.metadata_sha256,
              challengerMetric=candidate.metric, step=0 if spec.strategy == "canary" else None,
              trafficShare=0.0, startedAt=None, gates=None, previous=None, previousUri=None,
              previousRequests=None, previousErrors=None,
              message=f"starting challenger version {version} beside version {r.serving}")
    r.status.update(candidateVersion=version, promotionMessage=f"version {version} is analysed on live traffic "
                                                               f"({spec.strategy}) before it is promoted")
    r.events.append(("Normal", Event.CHALLENGER_STARTED, f"version {version} runs as the challenger of version "
                     f"{r.serving} ({spec.strategy}); it is promoted only when it passes the live analysis"))
    r.counts.append("challenger")


# ----------------------------------------------------------------------------------------- one reconcile

def advance(r: Rollout, spec: RolloutSpec, *, candidate_version: int | None, challenger_state: str,
            evidence: Evidence | None, manual: Manual, now: float, classifier: bool,
            previous_model: ServedModel | None = None) -> None:
    """Move the challenger's life one reconcile on. `challenger_state` is the challenger Deployment's rollout
    state (Missing, Progressing, Available, Failed); `evidence` what the servers showed since status.rollout
    .startedAt (None when they could not be read: nothing is decided); `previous_model` the verified previous
    version while Watching (to roll back to)."""
    current = phase(r)
    t = Thresholds.from_spec(spec.analysis)
    if current in LIVE:
        _analyse(r, spec, t, candidate_version, challenger_state, evidence, manual, now, classifier)
    elif current == "Promoting":
        _promoting(r, now, spec)
    elif current == "Watching":
        _watching(r, t, evidence, now, previous_model)


def _stop(r: Rollout, message: str) -> None:
    ro = state(r)
    ro.update(phase="Stable", challenger=None, challengerUri=None, challengerSha256=None,
              challengerMetadataSha256=None, challengerMetric=None, step=None, trafficShare=None, startedAt=None,
              message=message)


def _analyse(r: Rollout, spec: RolloutSpec, t: Thresholds, candidate_version: int | None, challenger_state: str,
             evidence: Evidence | None, manual: Manual, now: float, classifier: bool) -> None:
    ro = state(r)
    version = ro["challenger"]
    if spec.strategy == "direct":
        _stop(r, f"spec.rollout.strategy is direct: the analysis of version {version} stopped")
        r.status.update(candidateVersion=None, promotionMessage=None)  # promoted by the direct rules, if it passes
        return
    if candidate_version is not None and candidate_version not in (version, r.serving):
        _stop(r, f"version {version} was replaced by the newer version {candidate_version} before it was decided")
        r.events.append(("Normal", Event.CHALLENGER_REPLACED, ro["message"]))
        return
    if manual.abort:
        reject(r, now, f"aborted by the {ABORT_ANNOTATION} annotation")
        return
    if manual.promote:  # a person's decision, whatever the analysis shows so far
        promote_challenger(r, now, f"promoted by the {PROMOTE_ANNOTATION} annotation", evidence)
        return
    if challenger_state == "Failed":
        reject(r, now, f"its pods did not become Available within {spec.progress_deadline_seconds}s")
        return
    if challenger_state != "Available":
        ro["message"] = f"challenger version {version} is rolling out"
        return
    if ro.get("startedAt") is None:
        ro["startedAt"] = format_time(now)
    if evidence is None:
        ro["message"] = f"analysing version {version}: the servers' counters could not be read this time"
        return
    live = None if evidence.paired is not None or evidence.live is None else (
        evidence.live.get(ro["champion"]), evidence.live.get(version))
    result = analyse(t, evidence.champion, evidence.challenger, evidence.paired, classifier=classifier,
                     elapsed_seconds=now - parse_time(ro["startedAt"]),
                     unpaired_reason=evidence.unpaired_reason or "no rows can be paired", live=live)
    ro["gates"] = [{"name": g.name, "verdict": g.verdict, "value": g.value, "threshold": g.threshold,
                    "message": g.message[:512]} for g in result.gates]
    ro["message"] = result.message[:2048]
    if result.decision == "reject":
        reject(r, now, result.message)
    elif result.decision == "promote":
        _passed(r, spec, now, result, evidence)


def _passed(r: Rollout, spec: RolloutSpec, now: float, result: Analysis, evidence: Evidence) -> None:
    ro = state(r)
    if ro["phase"] == "Canary":
        step = next_step(spec.canary.steps, ro.get("step") or 0, "promote")
        if step is not None:
            ro.update(step=step, startedAt=None, message=f"step {step + 1} of {len(spec.canary.steps)}: "
                                                         f"{spec.canary.steps[step]}% of the traffic")
            r.events.append(("Normal", Event.CANARY_STEPPED, f"version {ro['challenger']} passed step {step} "
                             f"({result.message}); now at {spec.canary.steps[step]}%"))
            return
    promote_challenger(r, now, result.message, evidence)


def promote_challenger(r: Rollout, now: float, why: str, evidence: Evidence | None) -> None:
    """The champion Deployment rolls out the challenger's version; the challenger keeps running until it is
    Available, and the previous champion's numbers are kept for the watch."""
    ro = state(r)
    model = challenger_model(ro)
    ro.update(phase="Promoting", previous=r.serving, previousUri=r.status.get("modelUri"),
              previousRequests=evidence.champion.requests if evidence else None,
              previousErrors=evidence.champion.errors if evidence else None,
              message=f"promoting version {model.version}: {why}"[:2048])
    r.status.update(previousVersion=r.serving, modelVersion=model.version, modelUri=model.uri,
                    modelSha256=model.sha256, modelMetadataSha256=model.metadata_sha256,
                    metric=ro.get("challengerMetric"), candidateVersion=None, promotionMessage=None)
    r.target, r.serving, r.state = model, model.version, "Progressing"
    r.events.append(("Normal", Event.CHALLENGER_PROMOTED, f"version {model.version} replaces version "
                     f"{ro['previous']}: {why}"[:1024]))
    r.counts.append("promoted")


def reject(r: Rollout, now: float, why: str) -> None:
    """The challenger is removed, the champion keeps serving, and the version is not promoted again by itself."""
    ro = state(r)
    version = ro["challenger"]
    entries = [e for e in ro.get("rejected") or () if e["version"] != version]
    entries.append({"version": version, "time": format_time(now), "message": why[:1024]})
    ro["rejected"] = entries[-REJECTED_KEPT:]
    _stop(r, f"version {version} was rejected: {why}"[:2048])
    r.status.update(candidateVersion=version, rollbackGeneration=r.generation,
                    promotionMessage=f"version {version} was rejected on live traffic: {why}"[:1024])
    r.events.append(("Warning", Event.CHALLENGER_REJECTED, f"version {version} rejected; version {r.serving} keeps "
                     f"serving: {why}"[:1024]))
    r.counts.append("rejected")


def _promoting(r: Rollout, now: float, spec: RolloutSpec) -> None:
    ro = state(r)
    if r.serving != ro.get("challenger"):  # the rollout failed and was rolled back meanwhile
        _stop(r, f"version {ro.get('challenger')} did not become Available as the champion; version {r.serving} "
                 f"serves")
        return
    if r.state == "Available":
        _stop(r, "")
        ro["champion"] = r.serving
        watch_seconds = Thresholds.from_spec(spec.analysis).watch_seconds
        if watch_seconds <= 0:
            ro.update(message=f"version {r.serving} serves", previous=None, previousUri=None, previousRequests=None,
                      previousErrors=None)
            return
        ro.update(phase="Watching", champion=r.serving, startedAt=format_time(now),
                  message=f"watching version {r.serving} against version {ro.get('previous')} for "
                          f"{watch_seconds:.0f} s")


def _watching(r: Rollout, t: Thresholds, evidence: Evidence | None, now: float,
              previous_model: ServedModel | None) -> None:
    ro = state(r)
    if ro.get("previous") is None:  # nothing to return to
        if now - parse_time(ro["startedAt"]) >= t.watch_seconds:
            _stop(r, f"version {r.serving} serves")
        return
    if evidence is None:
        return
    # Promoted by hand before any counters were read: no error rate to compare with (Served(0, 0) never tests
    # worse), live performance still is.
    previous = Served(ro.get("previousRequests") or 0, ro.get("previousErrors") or 0)
    live = evidence.live or {}
    verdict = watch(t, previous, evidence.champion, elapsed_seconds=now - parse_time(ro["startedAt"]),
                    previous_live=live.get(ro["previous"]), current_live=live.get(r.serving))
    if verdict.rollback:
        _watch_rollback(r, now, verdict.message, previous_model)
    elif verdict.done:
        _stop(r, verdict.message)
        ro.update(previous=None, previousUri=None, previousRequests=None, previousErrors=None)
    else:
        ro["message"] = verdict.message


def end_watch(r: Rollout, why: str) -> None:
    """A watch that ends before its time (a newer version arrived): the previous version is released."""
    if phase(r) == "Watching":
        _stop(r, f"the watch of version {r.serving} ended: {why}")
        state(r).update(previous=None, previousUri=None, previousRequests=None, previousErrors=None)


def _watch_rollback(r: Rollout, now: float, why: str, previous_model: ServedModel | None) -> None:
    ro = state(r)
    bad, back = r.serving, ro["previous"]
    if previous_model is None:
        ro["message"] = f"version {bad} should be rolled back ({why}) but version {back} cannot be read"
        r.events.append(("Warning", Event.ROLLBACK_FAILED, ro["message"][:1024]))
        return
    entries = [e for e in ro.get("rejected") or () if e["version"] != bad]
    entries.append({"version": bad, "time": format_time(now), "message": f"rolled back while watched: {why}"[:1024]})
    ro["rejected"] = entries[-REJECTED_KEPT:]
    _stop(r, f"version {bad} was rolled back to version {back}: {why}"[:2048])
    ro.update(previous=None, previousUri=None, previousRequests=None, previousErrors=None)
    r.status.update(previousVersion=bad, modelVersion=back, rollbackGeneration=r.generation, modelUri=previous_model.uri,
                    modelSha256=previous_model.sha256, modelMetadataSha256=previous_model.metadata_sha256,
                    candidateVersion=bad, promotionMessage=f"version {bad} was rolled back after its promotion: "
                                                           f"{why}"[:1024])
    r.target, r.serving, r.state = previous_model, back, "Progressing"
    r.events.append(("Warning", Event.ROLLED_BACK, f"version {bad} rolled back to version {back}: {why}"[:1024]))
    r.counts.append("rollback")


# ----------------------------------------------------------------------------------------- replicas and share

def replicas_of(spec: RolloutSpec, phase_: str, step: int | None, champion_replicas: int) -> tuple[int, int, float]:
    """(champion, challenger) replicas and the challenger's share of user traffic. Shadowing: the champion keeps
    its replicas and the challenger gets enough for the copied fraction. Canary by replicas: both versions share
    the champion's replica count behind the one Service (each keeps at least one pod). Canary through a Gateway:
    the HTTPRoute carries the weight and the challenger is sized for it."""
    if phase_ == "Shadowing":
        return champion_replicas, max(1, math.ceil(champion_replicas * spec.shadow.fraction)), 0.0
    weight = spec.canary.steps[step or 0]
    if spec.gateway is not None:
        return champion_replicas, max(1, math.ceil(champion_replicas * weight / 100)), weight / 100
    champion, challenger = canary_replicas(champion_replicas, weight)
    return champion, challenger, round(challenger / (champion + challenger), 4)

