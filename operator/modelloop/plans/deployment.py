"""A ModelDeployment's reconcile, decided (pure): from what the controller observed (DeploymentWorld: the candidate
version, the served one, the child Deployments, what a rollback or a live analysis needs), the rollout's decisions
(modelloop.rollout: roll back, promote, hold; modelloop.challenger: a challenger's analysis and the watch after it),
the children to apply or delete, and the status and Events.

The rollout state written in status is the one of the champion Deployment as its apply returned it: the controller
applies `DeploymentPlan.children`, then `settle` finishes the status from that answer.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from .. import challenger
from ..api.deployment import ModelDeploymentSpec
from ..challenger import Evidence, Manual
from ..names import ABORT_ANNOTATION, ANNOTATION_MODEL_VERSION, PROMOTE_ANNOTATION
from ..reasons import DeploymentEvent as Event
from ..render.deployment import (
    ServedModel, challenger_name, desired_replicas, render_challenger, render_deployment, render_hpa,
    render_network_policy, render_pdb, render_service, selector_string, url,
)
from ..render.gateway import render_httproute
from ..rollout import (
    Candidate, ModelUnavailable, Rollout, admitted, deployment_conditions, observe, phase_of, roll_back,
    rollback_version, rollout_state, switch,
)
from ..status import merge_conditions, transition_events

EventTuple = tuple[str, str, str]


@dataclass(frozen=True)
class Rollback:
    """The last Available version, read back for a rollback: its verified model and metric, or why it cannot be."""

    model: ServedModel | None = None
    metric: dict | None = None
    error: str | None = None


@dataclass(frozen=True)
class Analysis:
    """What a challenger's analysis (or the watch after a promotion) read: the servers' evidence, whether the model
    classifies, and the previous champion's model (the watch rolls back to it)."""

    evidence: Evidence | None = None
    classifier: bool = False
    previous_model: ServedModel | None = None


@dataclass(frozen=True)
class DeploymentWorld:
    """Everything one reconcile reads. `status`: the resource's status (a copy), with the served version's
    metadata digest learnt from the store when an older status lacked it."""

    obj: dict
    spec: ModelDeploymentSpec          # with the storage its servers read (its own, or its training's)
    status: dict
    now: float                         # seconds since the epoch
    candidate: Candidate | None = None
    unavailable: ModelUnavailable | None = None
    target: ServedModel | None = None  # the version status says is served
    dep: dict | None = None            # the champion Deployment (read when a version is served)
    challenger_dep: dict | None = None
    manual: Manual = field(default_factory=Manual)
    rollback: Rollback | None = None   # read when the serving version's rollout failed
    analysis: Analysis | None = None   # read while a challenger is analysed or a promotion watched


@dataclass(frozen=True)
class Optional_:
    """A child that exists only when the spec asks for it: `manifest` None means delete it if this resource made it."""

    api_version: str
    kind: str
    manifest: dict | None


@dataclass
class DeploymentPlan:
    rollout: Rollout
    status: dict
    champion: dict | None = None                     # the champion Deployment (None: nothing is served yet)
    children: list[dict] = field(default_factory=list)  # Service, NetworkPolicy: applied as rendered
    optional: list[Optional_] = field(default_factory=list)  # HPA, PDB
    challenger: list[dict] = field(default_factory=list)  # the challenger's Deployment, Service, NetworkPolicy
    delete_challenger: bool = False                  # its three children go (the challenger Deployment exists)
    route: dict | None = None                        # the HTTPRoute (spec.rollout.gateway)
    manual: Manual = field(default_factory=Manual)   # annotations to remove once status is written
    conditions: list[dict] = field(default_factory=list)
    events: list[EventTuple] = field(default_factory=list)


# ----------------------------------------------------------------------------- what observe reads

def rollout_of(world: DeploymentWorld) -> Rollout:
    """The reconcile's Rollout, on a copy of the observed status (the decisions change nested fields)."""
    status, target = copy.deepcopy(world.status), world.target
    return Rollout(status, serving=status.get("modelVersion"), target=target,
                   failed=list(status.get("failedVersions") or []),
                   state=rollout_state(world.dep, status.get("modelVersion")) if target else "Missing",
                   generation=world.obj["metadata"].get("generation", 1))


def live(status: dict, spec: ModelDeploymentSpec) -> bool:
    """Whether the challenger Deployment is read: a challenger or a watch under way, or a strategy that makes one."""
    return ((status.get("rollout") or {}).get("phase") or "Stable") != "Stable" or spec.rollout.strategy != "direct"


def rolled_back(world: DeploymentWorld) -> Rollout:
    """The rollout once a rollout past its deadline rolled back to the last version that was Available (what the
    analysis then reads is of the version served after it)."""
    r = rollout_of(world)
    back = rollback_version(r)
    if back is not None:
        rb = world.rollback or Rollback(error="the version to roll back to was not read")
        roll_back(r, back, rb.model, rb.metric, rb.error, r.generation, world.spec.rollout.progress_deadline_seconds)
    return r


# ----------------------------------------------------------------------------- the plan

def plan(world: DeploymentWorld) -> DeploymentPlan:
    r = rolled_back(world)
    spec, candidate = world.spec, world.candidate
    manual = world.manual
    p = DeploymentPlan(r, r.status, manual=manual)
    if challenger.phase(r) not in challenger.LIVE:
        if manual.promote or manual.abort:  # acted upon only while a challenger is analysed
            r.events.append(("Warning", Event.NO_CHALLENGER, f"{PROMOTE_ANNOTATION if manual.promote else ABORT_ANNOTATION} "
                             f"ignored: no challenger is analysed (status.rollout.phase "
                             f"{challenger.phase(r)}); the annotation is removed"))
        manual = Manual()
    if challenger.phase(r) != "Stable":
        a = world.analysis or Analysis()
        challenger.advance(r, spec.rollout, candidate_version=candidate.model.version if candidate else None,
                           challenger_state=_challenger_state(r.status["rollout"], world.challenger_dep),
                           evidence=a.evidence, manual=manual, now=world.now, classifier=a.classifier,
                           previous_model=a.previous_model)
    # Promotion of the candidate: directly, or as a challenger first (a newer version ends a watch: it is compared
    # with the watched champion on live traffic anyway).
    if candidate and challenger.phase(r) in ("Stable", "Watching") and admitted(r, candidate, r.generation,
                                                                              spec.promotion):
        challenger.end_watch(r, f"version {candidate.model.version} arrived")
        if spec.rollout.strategy != "direct" and r.serving is not None:
            challenger.start(r, candidate, spec.rollout)
        else:
            switch(r, candidate)
    if r.target:
        _children(world, p)
    return p


def _challenger_state(ro: dict, challenger_dep: dict | None) -> str:
    return rollout_state(challenger_dep, ro.get("challenger")) if ro.get("challenger") is not None else "Missing"


def analysing(ro: dict, challenger_dep: dict | None) -> bool:
    """Whether the challenger's pods serve, so that its analysis window runs (the evidence is then read)."""
    return bool(ro.get("phase") in challenger.LIVE and _challenger_state(ro, challenger_dep) == "Available"
                and ro.get("startedAt"))


def _children(world: DeploymentWorld, p: DeploymentPlan) -> None:
    """The children of the served version: the champion Deployment (at the replicas a canary leaves it), Service,
    NetworkPolicy, HPA and PDB when asked for, the challenger's while it is analysed or promoted, the route."""
    obj, spec, r = world.obj, world.spec, p.rollout
    name = obj["metadata"]["name"]
    ro = p.status.get("rollout") or {}
    champion_replicas, challenger_replicas, share = replicas(spec, ro, world.dep, world.challenger_dep)
    p.champion = render_deployment(obj, spec, r.target, replicas=champion_replicas)  # type: ignore[arg-type]
    p.children = [render_service(obj), render_network_policy(obj)]
    p.optional = [Optional_("autoscaling/v2", "HorizontalPodAutoscaler", render_hpa(obj, spec)),
                  Optional_("policy/v1", "PodDisruptionBudget", render_pdb(obj, spec))]
    if ro.get("challenger") is not None and ro.get("phase") in (*challenger.LIVE, "Promoting"):
        canary = ro.get("phase") == "Canary" or (ro.get("phase") == "Promoting" and ro.get("strategy") == "canary")
        in_service = canary and spec.rollout.gateway is None
        p.challenger = [render_challenger(obj, spec, challenger.challenger_model(ro), challenger_replicas, in_service),
                        render_service(obj, challenger=True), render_network_policy(obj, challenger=True)]
    else:
        p.delete_challenger = world.challenger_dep is not None
    p.route = render_httproute(obj, spec, name, challenger_name(name), round(share * 100))
    if ro.get("challenger") is not None:
        ro["trafficShare"] = share


def replicas(spec: ModelDeploymentSpec, ro: dict, dep: dict | None, challenger_dep: dict | None
             ) -> tuple[int | None, int, float]:
    """(champion replicas to render, None for the spec's or the HPA's; challenger replicas; the challenger's share of
    the users). A canary by replicas takes a pod from the champion only for a challenger pod that is Available:
    capacity never dips while the challenger starts or scales to the next step."""
    current = ro.get("phase")
    if ro.get("challenger") is None or current not in (*challenger.LIVE, "Promoting"):
        return None, 0, 0.0
    base = (((dep or {}).get("status") or {}).get("replicas") or 1) if spec.autoscaling else desired_replicas(spec)
    analysed = current if current in challenger.LIVE else ("Shadowing" if ro.get("strategy") == "shadow" else "Canary")
    _, wanted, share = challenger.replicas_of(spec.rollout, analysed, ro.get("step"), base)
    serving = min(wanted, available(challenger_dep, ro["challenger"]))
    if analysed == "Shadowing":
        return None, wanted, 0.0
    if spec.rollout.gateway is not None:
        return None, wanted, share if serving else 0.0
    if current == "Promoting" or spec.autoscaling:  # the champion keeps its own count; both behind the Service
        return None, wanted, round(serving / (base + serving), 4)
    return base - serving, wanted, round(serving / base, 4)


def available(dep: dict | None, version: int) -> int:
    """Available pods of a Deployment whose template serves `version`."""
    if dep is None:
        return 0
    annotations = dep["spec"]["template"]["metadata"].get("annotations") or {}
    if annotations.get(ANNOTATION_MODEL_VERSION) != str(version):
        return 0
    return ((dep.get("status") or {}).get("availableReplicas")) or 0


def settle(world: DeploymentWorld, p: DeploymentPlan, dep: dict | None) -> None:
    """The status once the children are applied: the rollout state of the champion Deployment as the apply returned
    it (`dep`; the one read when nothing was applied), the conditions, and the Events (Promoted already says a version
    is rolling out, RolloutComplete that it serves: a condition's transition is posted only when no decision said
    it)."""
    r, status, name = p.rollout, p.status, world.obj["metadata"]["name"]
    if r.target:
        observe(r, rollout_state(dep, r.serving))
    if status.get("rollout"):
        status["rollout"]["strategy"] = world.spec.rollout.strategy
    dst = (dep or {}).get("status") or {}
    generation = r.generation
    p.conditions = merge_conditions(status.get("conditions"), deployment_conditions(
        r.state, world.unavailable, r.held, r.serving, dep, analysing_message(status.get("rollout"))), generation)
    status.update(observedGeneration=generation, conditions=p.conditions, phase=phase_of(r),
                  url=url(name, world.obj["metadata"]["namespace"]), replicas=dst.get("replicas", 0),
                  readyReplicas=dst.get("readyReplicas", 0), selector=selector_string(name),
                  failedVersions=r.failed or None)
    p.events = r.events + transition_events((world.obj.get("status") or {}).get("conditions"), p.conditions,
                                            decided=bool(r.events))


def analysing_message(ro: dict | None) -> str | None:
    if not ro or ro.get("phase") in (None, "Stable"):
        return None
    return ro.get("message") or ro["phase"]


def manual_of(obj: dict) -> Manual:
    """The promote and abort annotations. Setting one needs patch rights on the ModelDeployment, as a retrain request
    needs them on the ModelTraining."""
    annotations = obj["metadata"].get("annotations") or {}
    return Manual(promote=PROMOTE_ANNOTATION in annotations, abort=ABORT_ANNOTATION in annotations)

