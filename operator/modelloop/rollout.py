"""The rollout state machine of a ModelDeployment: which version to serve, roll back, promote or hold. Pure: the
controller reads the world (status, the child Deployment, the candidate version's verified metadata), calls these
functions, then applies children and writes status.

States of the rollout of the serving version: Missing (no child yet), Progressing, Available, Failed (past its
progress deadline). A Failed rollout rolls back to the last version that was Available; a version that failed is
not promoted again by itself (a pinned one is, once the user edits the spec after the rollback).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .api.deployment import PromotionSpec
from .names import ANNOTATION_MODEL_VERSION
from .promotion import should_promote
from .reasons import DeploymentEvent as Event, DeploymentReason as R
from .render.deployment import ServedModel
from .status import Cond

ROLLBACK = "rollback"   # a count in Rollout.counts; the others are promotion outcomes
FAILED_VERSIONS_KEPT = 20


@dataclass(frozen=True)
class Candidate:
    model: ServedModel
    metric: dict | None
    pinned: bool        # chosen explicitly (a fixed URI or a version number): no metric gate


class ModelUnavailable(Exception):
    """No version can be resolved; `stalled` when a user must act (not merely wait for a training)."""

    def __init__(self, reason: str, message: str, stalled: bool):
        super().__init__(message)
        self.reason, self.message, self.stalled = reason, message, stalled


@dataclass
class Rollout:
    """One reconcile's view of the rollout, changed by the decisions below: `status` (the fields to write),
    the version served and its model, the rollout state, the versions that failed, why a candidate is held,
    the Events to post and the metric counts to add once status is written."""

    status: dict
    serving: int | None
    target: ServedModel | None
    state: str
    failed: list[int]
    held: str | None = None
    generation: int = 0  # the resource's .metadata.generation
    events: list[tuple[str, str, str]] = field(default_factory=list)
    counts: list[str] = field(default_factory=list)


def rollout_state(dep: dict | None, version: int | None) -> str:
    """Missing, Progressing, Available or Failed (past its progress deadline), for the rollout of `version`."""
    if dep is None:
        return "Missing"
    annotations = dep["spec"]["template"]["metadata"].get("annotations") or {}
    st = dep.get("status") or {}
    if annotations.get(ANNOTATION_MODEL_VERSION) != str(version) or st.get("observedGeneration", 0) < dep["metadata"]["generation"]:
        return "Progressing"
    for c in st.get("conditions") or ():
        if c["type"] == "Progressing" and c["status"] == "False" and c.get("reason") == R.PROGRESS_DEADLINE_EXCEEDED:
            return "Failed"
    want = dep["spec"].get("replicas", 1)
    if (st.get("updatedReplicas", 0) >= want and st.get("availableReplicas", 0) >= want
            and st.get("replicas", 0) == st.get("updatedReplicas", 0)):
        return "Available"
    return "Progressing"


def rollback_version(r: Rollout) -> int | None:
    """The version to roll back to: the last one that was Available, when the serving one's rollout failed."""
    back = r.status.get("lastAvailableVersion")
    return back if r.state == "Failed" and back and back != r.serving else None


def roll_back(r: Rollout, back: int, model: ServedModel | None, metric: dict | None, error: str | None,
              generation: int, deadline_seconds: int) -> None:
    """Serve `back` again (its verified `model`), or report why it cannot be read (`error`)."""
    if model is None:
        r.events.append(("Warning", Event.ROLLBACK_FAILED, f"cannot roll back to version {back}: {error}"))
        return
    r.failed = sorted(set(r.failed) | {r.serving})[-FAILED_VERSIONS_KEPT:]  # type: ignore[arg-type]
    r.events.append(("Warning", Event.ROLLED_BACK, f"version {r.serving} did not become Available within "
                     f"{deadline_seconds}s; rolled back to version {back}"))
    r.counts.append(ROLLBACK)
    r.status.update(rollbackGeneration=generation, previousVersion=r.serving, modelVersion=back, modelUri=model.uri,
                    modelSha256=model.sha256, modelMetadataSha256=model.metadata_sha256, metric=metric)
    r.target, r.serving, r.state = model, back, "Progressing"


def promote(r: Rollout, candidate: Candidate, generation: int, policy: PromotionSpec) -> None:
    """Promote the candidate, or hold it (a failed or rejected version, the promotion policy), or clear a stale
    candidate."""
    if admitted(r, candidate, generation, policy):
        switch(r, candidate)


def admitted(r: Rollout, candidate: Candidate, generation: int, policy: PromotionSpec) -> bool:
    """Whether the candidate may replace the serving version (directly, or by winning a live analysis); a held one
    says why in status."""
    version = candidate.model.version
    if version == r.serving:
        r.status.update(candidateVersion=None, promotionMessage=None)
        return False
    # A version that failed its rollout, or was rejected on live traffic, is not tried again by itself; a pinned
    # one is retried once the user edits the spec after it (their new intent).
    retry = candidate.pinned and generation > (r.status.get("rollbackGeneration") or 0)
    if version in r.failed and not retry:
        r.held = (f"version {version} failed its rollout and is not retried"
                  + ("; edit spec.model to retry it" if candidate.pinned else ""))
        r.status.update(candidateVersion=version, promotionMessage=r.held)
        return False
    rejected = {e["version"]: e for e in (r.status.get("rollout") or {}).get("rejected") or ()}
    if version in rejected and not retry:
        r.held = (f"version {version} was rejected on live traffic and is not tried again: "
                  f"{rejected[version].get('message', '')}"[:1024])
        r.status.update(candidateVersion=version, promotionMessage=r.held)
        return False
    decision = None if candidate.pinned else should_promote(policy, version, candidate.metric, r.serving,
                                                            r.status.get("metric"))
    if decision is not None and not decision.promote:
        r.held = decision.message
        if r.status.get("promotionMessage") != r.held:
            r.events.append(("Normal", Event.PROMOTION_HELD, r.held))
            r.counts.append(decision.reason)
        r.status.update(candidateVersion=version, promotionMessage=r.held)
        return False
    return True


def switch(r: Rollout, candidate: Candidate) -> None:
    """The champion Deployment rolls out the candidate's version."""
    version = candidate.model.version
    if r.serving is not None:
        r.status["previousVersion"] = r.serving
    r.status.update(modelVersion=version, modelUri=candidate.model.uri, modelSha256=candidate.model.sha256,
                    modelMetadataSha256=candidate.model.metadata_sha256, metric=candidate.metric,
                    candidateVersion=None, promotionMessage=None)
    if version in r.failed:  # a pinned retry of a version that failed before
        r.failed.remove(version)
    r.target, r.serving, r.state = candidate.model, version, "Progressing"
    r.events.append(("Normal", Event.PROMOTED, f"rolling out version {version}"
                     + (f" ({candidate.metric['name']}={candidate.metric['value']:.4g})" if candidate.metric else "")))
    r.counts.append("promoted")


def observe(r: Rollout, state: str) -> None:
    """The rollout's state once the children are applied; a version that became Available is remembered as the
    one to roll back to. A Failed rollout stays Failed (there was nothing to roll back to)."""
    if r.state != "Failed":
        r.state = state
    if r.state == "Available" and r.target and r.status.get("lastAvailableVersion") != r.serving:
        r.status.update(lastAvailableVersion=r.serving, lastAvailableUri=r.target.uri)
        r.events.append(("Normal", Event.ROLLOUT_COMPLETE, f"version {r.serving} is Available"))


def phase_of(r: Rollout) -> str:
    if r.state in ("Failed", "Available"):
        return r.state
    return "Pending" if r.target is None else "Progressing"


def deployment_conditions(state: str, unavailable: ModelUnavailable | None, held: str | None,
                          serving: int | None, dep: dict | None, analysing: str | None = None) -> list[Cond]:
    """The conditions of a ModelDeployment. `analysing`: what a live analysis (a challenger, or the watch after a
    promotion) is doing; Reconciling says it while the champion serves."""
    st = (dep or {}).get("status") or {}
    available = any(c["type"] == "Available" and c["status"] == "True" for c in st.get("conditions") or ())
    conds = [Cond.of("Available", available, R.MINIMUM_REPLICAS_AVAILABLE if available else R.MINIMUM_REPLICAS_UNAVAILABLE,
                     f"{st.get('availableReplicas', 0)} of {(dep or {}).get('spec', {}).get('replicas', 0)} replicas available")]
    if unavailable and serving is None:
        conds += [Cond.of("Progressing", False, unavailable.reason, unavailable.message),
                  Cond.of("Reconciling", not unavailable.stalled, unavailable.reason, unavailable.message),
                  Cond.of("Stalled", unavailable.stalled, unavailable.reason, unavailable.message),
                  Cond.of("Ready", False, unavailable.reason, unavailable.message)]
        return conds
    progressing = state in ("Progressing", "Missing")
    conds.append(Cond.of("Progressing", progressing, R.ROLLING_OUT if progressing else R.ROLLOUT_COMPLETE,
                         f"rolling out version {serving}" if progressing else f"version {serving} is rolled out"))
    if unavailable and unavailable.reason == R.STORAGE_UNAVAILABLE and not progressing:
        # Serving what it served, but a newer candidate cannot be looked at until the store answers.
        conds.append(Cond.of("Reconciling", True, unavailable.reason, unavailable.message))
    elif analysing and not progressing:
        conds.append(Cond.of("Reconciling", True, R.ANALYSING, analysing))
    else:
        conds.append(Cond.of("Reconciling", progressing, R.ROLLING_OUT if progressing else R.IDLE,
                             f"rolling out version {serving}" if progressing else ""))
    if state == "Failed":
        msg = f"version {serving} did not become Available within the progress deadline and there is no earlier version to roll back to"
        conds += [Cond.of("Stalled", True, R.PROGRESS_DEADLINE_EXCEEDED, msg), Cond.of("Ready", False, R.ROLLOUT_FAILED, msg)]
        return conds
    conds.append(Cond.of("Stalled", False, R.PROGRESSING if progressing else R.SERVING))
    if state == "Available":
        notes = [note for note in (held, unavailable and f"{unavailable.reason}: {unavailable.message}") if note]
        conds.append(Cond.of("Ready", True, R.SERVING, "; ".join([f"version {serving} is serving", *notes])))
    else:
        conds.append(Cond.of("Ready", False, R.ROLLING_OUT, f"version {serving} is rolling out"))
    return conds
