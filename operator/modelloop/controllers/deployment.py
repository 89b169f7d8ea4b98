"""ModelDeployment controller: serves a model version, promotes new ones, rolls back failed rollouts.

Level-based, in one shape (docs/architecture.md, "One reconcile shape"): `observe` resolves the candidate version
(a fixed URI, or the followed ModelTraining's latest or pinned version), reads the served version and the child
Deployments, the last Available version when a rollout missed its deadline, and the servers' evidence while a
challenger is analysed; `plans.deployment.plan` decides (roll back, promote, hold, a challenger's next step) and
renders the children; `act` applies them (Deployment, Service, NetworkPolicy, HPA, PDB, the challenger's, the
HTTPRoute) with server-side apply, then writes status from the champion's rollout state as the apply returned it.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import threading
import time
from dataclasses import replace
from typing import Any

import httpx
import kopf
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from .. import challenger, kube, metrics, served
from ..analysis import LIVE_METRIC, Live, Paired
from ..challenger import Evidence, Manual
from ..cache import BoundedCache
from ..api.deployment import ModelDeploymentSpec
from ..api.training import ModelTrainingSpec
from ..artifacts import split_version_uri
from ..config import SETTINGS
from ..meta import parse_duration, parse_time
from ..names import (
    ABORT_ANNOTATION, API_VERSION as API, DEPLOYMENT, GROUP, LABEL_DEPLOYMENT, LABEL_MANAGED_BY, MANAGER,
    PROMOTE_ANNOTATION, TRAINING, VERSION,
)
from ..plans import deployment as decide
from ..plans.deployment import Analysis, DeploymentPlan, DeploymentWorld, Rollback
from ..reasons import DeploymentReason as R
from ..render.deployment import ServedModel, challenger_name
from ..rollout import ROLLBACK, Candidate, ModelUnavailable, Rollout, rollback_version
from . import endpoints, storage
from .endpoints import ready_endpoints

log = logging.getLogger("modelloop.deployment")

KIND = DEPLOYMENT.kind


# ----------------------------------------------------------------------------- model resolution

def _served(namespace: str, version_uri: str, credentials: storage.Credentials,
            field: str = "spec.model.uri") -> tuple[ServedModel, dict | None]:
    _, version = split_version_uri(version_uri)
    base = version_uri[: -len(f"/v{version}")].rstrip("/")
    meta = storage.verified_metadata(namespace, base, version, credentials, field=field)
    return (ServedModel(meta["metadata"]["version"], meta["uri"], meta["sha256"], meta["metadataSha256"]),
            meta["metric"])


def _status_target(namespace: str, status: dict, credentials: storage.Credentials) -> ServedModel | None:
    """The version status says is served. A status written before metadata.json was pinned learns its
    digest from the store now, once, provided the model there is still the pinned one."""
    if not (status.get("modelVersion") and status.get("modelUri") and status.get("modelSha256")):
        return None
    metadata_sha256 = status.get("modelMetadataSha256")
    if metadata_sha256 is None:
        try:
            stored, _ = _served(namespace, status["modelUri"], credentials)
        except Exception:  # noqa: BLE001 - unreadable now: keep serving on the model digest alone
            stored = None
        if stored is not None and stored.sha256 == status["modelSha256"]:
            metadata_sha256 = status["modelMetadataSha256"] = stored.metadata_sha256
    return ServedModel(status["modelVersion"], status["modelUri"], status["modelSha256"], metadata_sha256)


def resolve_candidate(namespace: str, spec: ModelDeploymentSpec, credentials: storage.Credentials,
                      training: dict | None) -> Candidate:
    """The version to serve: spec.model.uri's, or the followed ModelTraining's (`training`, read by the caller)."""
    m = spec.model
    try:
        if m.uri:
            model, metric = _served(namespace, m.uri.rstrip("/"), credentials)
            return Candidate(model, metric, pinned=True)
        if training is None:
            raise ModelUnavailable(R.TRAINING_NOT_FOUND, f"spec.model.fromTraining: ModelTraining '{m.from_training}' "
                                   f"not found in namespace {namespace}", stalled=True)
        tstatus = training.get("status") or {}
        pinned = m.version not in (None, "latest")
        version = int(m.version) if pinned else tstatus.get("latestVersion")
        if not version:
            raise ModelUnavailable(R.WAITING_FOR_TRAINING, f"ModelTraining '{m.from_training}' has no good version yet",
                                   stalled=False)
        output = ModelTrainingSpec.model_validate(training["spec"]).output.uri.rstrip("/")
        model, metric = _served(namespace, f"{output}/v{version}", credentials,
                                field=f"spec.output.uri of ModelTraining {m.from_training}")
        return Candidate(model, metric, pinned=pinned)
    except ModelUnavailable:
        raise
    except storage.StorageAccessError as e:
        raise ModelUnavailable(R.ARTIFACT_UNAVAILABLE, str(e)[:1024], stalled=True) from e
    except Exception as e:  # noqa: BLE001 - unreadable or tampered artifacts are reported, never crash
        if storage.store_unavailable(e):  # nothing wrong with the artifact as far as we know: wait for the store
            raise ModelUnavailable(R.STORAGE_UNAVAILABLE, f"the model store cannot be read: {e}"[:1024],
                                   stalled=False) from e
        raise ModelUnavailable(R.ARTIFACT_UNAVAILABLE, f"model artifact cannot be used: {e}"[:1024], stalled=False) from e


# ----------------------------------------------------------------------------- reconcile

def reconcile(namespace: str, name: str, body: Any = None) -> None:
    kube.converge(KIND, namespace, name, _reconcile, body)


def _reconcile(obj: dict | None) -> None:
    if not kube.reconcilable(obj):
        return
    world = observe(obj)
    act(world, decide.plan(world))


def observe(obj: dict) -> DeploymentWorld:
    """Every read of one reconcile: the followed training and the candidate version, the served version, the child
    Deployments, the last Available version when a rollout failed, and what a live analysis needs."""
    namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
    # A deep copy: the decisions change nested fields (status.rollout), and the write compares with what obj holds.
    status: dict[str, Any] = copy.deepcopy(obj.get("status") or {})
    try:
        spec = ModelDeploymentSpec.model_validate(obj["spec"])
    except ValidationError as e:
        raise kopf.PermanentError(f"spec is invalid: {e.errors()[0]['msg']}")
    unavailable: ModelUnavailable | None = None
    candidate: Candidate | None = None
    training = kube.get(API, TRAINING.kind, namespace, spec.model.from_training) if spec.model.from_training else None
    if spec.storage is None:  # the servers read the artifacts with the training's credentials
        spec = spec.model_copy(update={"storage": storage.deployment_storage(namespace, spec, training)})
    try:
        credentials = storage.credentials_from_secret(namespace, spec.storage)
        candidate = resolve_candidate(namespace, spec, credentials, training)
    except storage.StorageAccessError as e:
        unavailable, credentials = ModelUnavailable(R.SECRET_NOT_FOUND, str(e), stalled=True), storage.ANONYMOUS
    except ModelUnavailable as e:
        unavailable = e
    target = _status_target(namespace, status, credentials)
    # Without a version in status nothing has been rolled out: the rollout state is Missing either way.
    world = DeploymentWorld(obj, spec, status, time.time(), candidate, unavailable, target,
                            kube.get("apps/v1", "Deployment", namespace, name) if target else None,
                            manual=decide.manual_of(obj))
    if decide.live(status, spec):
        world = replace(world, challenger_dep=kube.get("apps/v1", "Deployment", namespace, challenger_name(name)))
    if rollback_version(decide.rollout_of(world)) is not None:
        try:
            model, metric = _served(namespace, status["lastAvailableUri"], credentials)
            world = replace(world, rollback=Rollback(model, metric))
        except Exception as e:  # noqa: BLE001 - reported as RollbackFailed
            world = replace(world, rollback=Rollback(error=str(e)))
    r = decide.rolled_back(world)
    if challenger.phase(r) != "Stable":
        world = replace(world, analysis=_analysis(namespace, name, spec, r, world.challenger_dep, credentials))
    return world


def act(world: DeploymentWorld, plan: DeploymentPlan) -> None:
    """The writes, in order: the children (server-side apply), then the status once the champion's rollout state is
    known from its apply, the annotations acted upon, the metric counts and the Events."""
    obj = world.obj
    namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
    dep = world.dep
    if plan.champion is not None:
        dep = _apply(plan.champion, world.dep)
        for child in plan.children:
            _apply(child)
        for optional in plan.optional:
            _apply_optional(namespace, name, optional.api_version, optional.kind, optional.manifest)
        _converge_challenger(namespace, name, plan, world.challenger_dep)
        _converge_route(namespace, name, plan.route)
    decide.settle(world, plan, dep)
    r = plan.rollout
    if r.target:
        metrics.DEPLOYMENT_VERSION.labels(namespace, name).set(r.serving)
    if plan.status.get("rollout"):
        _export_rollout(namespace, name, plan.status["rollout"])
    kube.write_status(obj, plan.status)
    _forget_manual(obj, plan.manual)
    for outcome in r.counts:  # once the status that records them is written
        (metrics.ROLLBACKS.labels(namespace, name) if outcome == ROLLBACK
         else metrics.PROMOTIONS.labels(namespace, name, outcome)).inc()
    kube.emit_events(obj, plan.events)


# ----------------------------------------------------------------------------- the challenger

def _forget_manual(obj: dict, manual: Manual) -> None:
    """Remove an annotation once acted upon (its outcome is in status and events), testing its value first so
    that one set again meanwhile stays for the next reconcile."""
    annotations = obj["metadata"].get("annotations") or {}
    for key, present in ((PROMOTE_ANNOTATION, manual.promote), (ABORT_ANNOTATION, manual.abort)):
        if not present:
            continue
        path = "/metadata/annotations/" + key.replace("~", "~0").replace("/", "~1")
        try:
            kube.patch(API, KIND, obj["metadata"]["namespace"], obj["metadata"]["name"],
                       [{"op": "test", "path": path, "value": annotations[key]}, {"op": "remove", "path": path}],
                       merge=False)
        except ApiException as e:
            if e.status not in (404, 409, 422):  # gone, or changed meanwhile: the next reconcile sees it
                raise


def _analysis(namespace: str, name: str, spec: ModelDeploymentSpec, r: Rollout, challenger_dep: dict | None,
              credentials: storage.Credentials) -> Analysis:
    """What challenger.advance needs from the world: the servers' evidence while the challenger's pods serve (or
    while a promotion is watched), whether the model classifies, and the previous champion's model."""
    ro = r.status["rollout"]
    current = ro.get("phase")
    evidence, previous_model, classifier = None, None, False
    analysing = decide.analysing(ro, challenger_dep)
    if analysing or current == "Watching":
        champion = ro["champion"] if analysing else r.serving
        classifier = _task(namespace, r.status["modelUri"], credentials) == "classification"
        evidence = _evidence(namespace, name, spec, ro, champion, ro.get("challenger") if analysing else None,
                             classifier)
    if current == "Watching" and ro.get("previousUri"):
        try:
            previous_model, _ = _served(namespace, ro["previousUri"], credentials)
        except Exception as e:  # noqa: BLE001 - a rollback then reports that it cannot read it
            log.warning("deployment=%s/%s previous_version_unreadable=%s", namespace, name, str(e)[:300])
    return Analysis(evidence, classifier, previous_model)


def _task(namespace: str, version_uri: str, credentials: storage.Credentials) -> str:
    _, version = split_version_uri(version_uri)
    base = version_uri.rstrip("/")[: -len(f"/v{version}")]
    return storage.verified_metadata(namespace, base, version, credentials)["metadata"]["task"]


def _evidence(namespace: str, name: str, spec: ModelDeploymentSpec, ro: dict, champion: int,
              challenger_version: int | None, classifier: bool) -> Evidence | None:
    """Each version's counters since status.rollout.startedAt from every ready pod of both Services; with feedback
    on, the two versions on the same prediction ids while shadowing, or each version's live performance on its own
    labelled rows in a canary and during the watch. None when no pod answered, or when the decision is due and the
    store-wide reading it needs failed (no decision on part of the evidence)."""
    since_ms = int(parse_time(ro["startedAt"]) * 1000)
    counted = _served_counters(namespace, name, since_ms)
    if counted is None:
        return None
    addresses, docs = counted
    by_version = lambda v: [d for d in docs if d["modelVersion"] == v]  # noqa: E731
    champion_served = served.merge_served(by_version(champion))
    challenger_served = served.merge_served(by_version(challenger_version) if challenger_version else [])
    champion_pods = [a for a, d in zip(addresses, docs) if d["modelVersion"] == champion] or addresses
    due = challenger_version is not None and (
        time.time() - parse_time(ro["startedAt"]) >= parse_duration(spec.rollout.analysis.window)
        and challenger_served.requests >= spec.rollout.analysis.min_requests)
    why, paired, live = _unpaired_reason(spec, ro, challenger_version), None, None
    if challenger_version is not None and why is None:
        paired = _paired(namespace, name, champion_pods, champion, challenger_version, since_ms, fresh=due)
        if paired is None:
            return None
    elif spec.feedback is not None and ro.get("phase") in ("Canary", "Watching"):
        live = _live_of_both(namespace, name, spec, ro, champion_pods, since_ms, classifier, due)
        if live is None and due:
            return None
    evidence = Evidence(champion_served, challenger_served, paired, why, live)
    for role, numbers in (("champion", evidence.champion), ("challenger", evidence.challenger)):
        metrics.ROLLOUT_REQUESTS.labels(namespace, name, role).set(numbers.requests)
        metrics.ROLLOUT_ERROR_RATE.labels(namespace, name, role).set(
            numbers.errors / numbers.requests if numbers.requests else 0)
        metrics.ROLLOUT_P99.labels(namespace, name, role).set(numbers.p99_seconds or 0)
    return evidence


def _served_counters(namespace: str, name: str, since_ms: int) -> tuple[list[str], list[dict]] | None:
    """The ready pods of both Services that answered /served, and their answers; None when none did."""
    addresses = sorted(set(ready_endpoints(namespace, name)) | set(ready_endpoints(namespace, challenger_name(name))))
    answered, docs, errors = [], [], []
    with endpoints.client(SETTINGS.sketch_deadline_seconds) as http:
        for address in addresses:
            try:
                docs.append(served.parse_served(endpoints.get_json(http, endpoints.pod_url(
                    address, name, f"served?since={since_ms}"))))
                answered.append(address)
            except (httpx.HTTPError, endpoints.AnswerTooLarge, ValueError) as e:
                errors.append(f"{address}: {type(e).__name__}: {e}"[:300])
    if not docs:
        log.warning("deployment=%s/%s evidence=unavailable errors=%s", namespace, name, "; ".join(errors)[:600])
        return None
    return answered, docs


def _unpaired_reason(spec: ModelDeploymentSpec, ro: dict, challenger_version: int | None) -> str | None:
    """Why the two versions' rows cannot be paired while a challenger is analysed; None when they can (or during
    the watch, where there is no challenger)."""
    if challenger_version is None:
        return None
    if ro.get("phase") != "Shadowing":
        return "a canary's rows are each answered by one version, so none can be paired"
    if spec.feedback is None:
        return "spec.feedback is off: no prediction records to pair"
    return None


def _live_of_both(namespace: str, name: str, spec: ModelDeploymentSpec, ro: dict, pods: list[str], since_ms: int,
                  classifier: bool, due: bool) -> dict[int, Live] | None:
    """Live performance of both versions on their own rows. A canary: both since its step started. The watch: the
    new champion since its promotion, the previous version over the watchFor before it (what it showed)."""
    if ro.get("phase") == "Canary":
        return _live(namespace, name, pods, since_ms, classifier, fresh=due)
    before = since_ms - int(parse_duration(spec.rollout.analysis.watch_for) * 1000)
    after, earlier = (_live(namespace, name, pods, since, classifier, fresh=False) for since in (since_ms, before))
    if after is None or earlier is None:
        return None
    return {v: found for v, found in ((ro.get("previous"), earlier.get(ro.get("previous"))),
                                      (ro.get("champion"), after.get(ro.get("champion")))) if found is not None}


# (namespace, deployment, what was asked) -> (monotonic time, the last answer) of the pods' store-wide reads: the
# paired records (/compare) and each version's live performance (/performance). Each costs a champion pod seconds of
# store reads (every replica's segments of the window) on the thread that also takes feedback: read at most once a
# minute for display and the watch, and afresh for a decision. Kept here: pods' answers, not API objects, so no kopf
# index can hold them.
_read: BoundedCache[tuple[str, str, str], tuple[float, Any]] = BoundedCache(SETTINGS.cache_entries)
READ_EVERY_SECONDS = 60.0


def _store_wide(namespace: str, name: str, addresses: list[str], path: str, parse: Any, fresh: bool) -> Any | None:
    """`parse` of the first champion pod's answer to `path` (each reads every replica's records from the store); the
    last reading when one is less than a minute old and the decision is not due. None when no pod answered."""
    key = (namespace, name, path)
    last = _read.get(key)
    if last is not None and not fresh and time.monotonic() - last[0] < READ_EVERY_SECONDS:
        return last[1]
    errors = []
    with endpoints.client(3 * SETTINGS.sketch_deadline_seconds) as http:
        for address in addresses:
            try:
                answer = parse(endpoints.get_json(http, endpoints.pod_url(address, name, path)))
                _read.put(key, (time.monotonic(), answer))
                return answer
            except (httpx.HTTPError, endpoints.AnswerTooLarge, ValueError) as e:
                errors.append(f"{address}: {type(e).__name__}: {e}"[:200])
    log.warning("deployment=%s/%s read=%s unavailable errors=%s", namespace, name, path.split("?")[0],
                "; ".join(errors)[:600])
    return None if fresh or last is None else last[1]


def _paired(namespace: str, name: str, addresses: list[str], champion: int, challenger_version: int, since_ms: int,
            fresh: bool) -> Paired | None:
    """The two versions on the same prediction ids."""
    return _store_wide(namespace, name, addresses,
                       f"compare?champion={champion}&challenger={challenger_version}&since={since_ms}",
                       lambda doc: served.parse_paired(doc, champion=champion, challenger=challenger_version), fresh)


def _live(namespace: str, name: str, addresses: list[str], since_ms: int, classifier: bool,
          fresh: bool) -> dict[int, Live] | None:
    """Each version's live performance on its own labelled rows predicted since `since_ms` (accuracy for a
    classifier, mean absolute error for a regressor)."""
    return _store_wide(namespace, name, addresses, f"performance?since={since_ms}",
                       lambda doc: served.parse_live(doc, LIVE_METRIC[classifier]), fresh)


def _converge_challenger(namespace: str, name: str, plan: DeploymentPlan, challenger_dep: dict | None) -> None:
    """The challenger's Deployment, Service and NetworkPolicy while it is analysed or being promoted; deleted
    otherwise."""
    if plan.challenger:
        _apply(plan.challenger[0], challenger_dep)
        for child in plan.challenger[1:]:
            _apply(child)
    elif plan.delete_challenger:
        gone = challenger_name(name)
        for api_version, kind in (("apps/v1", "Deployment"), ("v1", "Service"),
                                  ("networking.k8s.io/v1", "NetworkPolicy")):
            kube.delete(api_version, kind, namespace, gone)
        _applied.discard(lambda key: key[1:] == (namespace, gone))


def _converge_route(namespace: str, name: str, route: dict | None) -> None:
    """With spec.rollout.gateway, the HTTPRoute through which users reach the model: the champion's Service, and the
    challenger's at its step's weight during a canary. A route made before is deleted once the spec no longer asks
    for one; routes are never listed otherwise (a cluster without the Gateway API has no such resource)."""
    with _optional_guard:
        known = name in (_optional.get(("HTTPRoute", namespace)) or ())
    if route is not None or known:
        _apply_optional(namespace, name, "gateway.networking.k8s.io/v1", "HTTPRoute", route)


def _export_rollout(namespace: str, name: str, ro: dict) -> None:
    for p in ("Stable", "Shadowing", "Canary", "Promoting", "Watching"):
        metrics.ROLLOUT_PHASE.labels(namespace, name, p).set(1 if ro.get("phase") == p else 0)
    metrics.ROLLOUT_SHARE.labels(namespace, name).set(ro.get("trafficShare") or 0)
    for gate in ro.get("gates") or ():
        if gate.get("value") is not None:
            metrics.ROLLOUT_GATE.labels(namespace, name, gate["name"]).set(gate["value"])
        if gate.get("threshold") is not None:
            metrics.ROLLOUT_GATE_THRESHOLD.labels(namespace, name, gate["name"]).set(gate["threshold"])
        metrics.ROLLOUT_GATE_PASSING.labels(namespace, name, gate["name"]).set(
            {"fail": 0, "wait": -1}.get(gate["verdict"], 1))


# (kind, namespace, name) -> (digest of the manifest last applied, monotonic time, the object's generation after it).
# An apply that would send the same manifest again within SETTINGS.resync_seconds is skipped: a reconcile
# triggered by a child's status changes nothing there. One older than that is sent, so the periodic resync
# repairs whatever someone else changed or deleted; a Deployment found missing or edited (its generation
# moved) is applied at once. Kept here, not a kopf index: it remembers this process's applies, not watched objects.
_applied: BoundedCache[tuple[str, str, str], tuple[str, float, int | None]] = BoundedCache(16 * SETTINGS.cache_entries)


def _apply(obj: dict, current: dict | None = None) -> dict | None:
    """Server-side apply of a rendered child unless it was just applied unchanged. `current`: the child as
    read in this reconcile, when it was read (its generation proves nobody changed its spec since)."""
    md = obj["metadata"]
    key = (obj["kind"], md["namespace"], md["name"])
    digest = hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    last = _applied.get(key)
    fresh = last is not None and last[0] == digest and time.monotonic() - last[1] < SETTINGS.resync_seconds
    if obj["kind"] == "Deployment":  # watched: found missing or edited, it is applied now
        fresh = fresh and current is not None and current["metadata"].get("generation") == last[2]
    if fresh:
        return current
    result = kube.apply(obj)
    _applied.put(key, (digest, time.monotonic(), (result.get("metadata") or {}).get("generation")))
    return result


# (kind, namespace) -> names of the HPAs, PDBs (or HTTPRoutes) there that a ModelDeployment owns: one LIST the first
# time a namespace needs it (a deployment that renders none must delete a leftover), then kept by this process's own
# applies and deletes. Kept here rather than as a kopf index: an index would watch every HPA, PDB and HTTPRoute of the
# cluster (list and watch rights the operator does not have, and no HTTPRoute resource without the Gateway API).
# Bounded: an entry that falls out costs one LIST again.
_optional: BoundedCache[tuple[str, str], set[str]] = BoundedCache(SETTINGS.cache_entries)
_optional_guard = threading.Lock()


def _owned_optional(api_version: str, kind: str, namespace: str) -> set[str]:
    with _optional_guard:
        names = _optional.get((kind, namespace))
        if names is None:
            names = {o["metadata"]["name"] for o in kube.list_(api_version, kind, namespace, f"{LABEL_MANAGED_BY}={MANAGER}")
                     if any(r.get("kind") == KIND for r in o["metadata"].get("ownerReferences") or ())}
            _optional.put((kind, namespace), names)
        return names


def _apply_optional(namespace: str, name: str, api_version: str, kind: str, obj: dict | None) -> None:
    names = _owned_optional(api_version, kind, namespace)
    if obj is not None:
        _apply(obj)
        with _optional_guard:
            names.add(name)
    elif name in names:
        kube.delete(api_version, kind, namespace, name)
        with _optional_guard:
            names.discard(name)


# ----------------------------------------------------------------------------- which deployments follow a training

@kopf.index(GROUP, VERSION, DEPLOYMENT.plural)
def followers(namespace: str, name: str, spec: Any, **_: Any) -> dict[tuple[str, str], str]:
    """kopf's index of the ModelDeployments by the training they follow, (namespace, training) -> names: a
    ModelTraining event reaches only its followers."""
    training = ((spec or {}).get("model") or {}).get("fromTraining")
    return {(namespace, training): name} if training else {}


def _followed_state(type_: str, body: Any) -> str:
    """What a following deployment reads of a ModelTraining."""
    spec = body.get("spec") or {}
    return json.dumps([type_ == "DELETED", (body.get("status") or {}).get("latestVersion"),
                       spec.get("output"), spec.get("storage")], sort_keys=True, default=str)


# ----------------------------------------------------------------------------- kopf wiring

@kopf.on.event(GROUP, VERSION, DEPLOYMENT.plural)
def on_deployment_event(type: str, body: Any, name: str, namespace: str, **_: Any) -> None:
    if type == "DELETED":
        with _optional_guard:  # the garbage collector removes its children
            for kind in ("HorizontalPodAutoscaler", "PodDisruptionBudget", "HTTPRoute"):
                (_optional.get((kind, namespace)) or set()).discard(name)
    elif not kube.own_write(body):  # its own status write: the reconcile that wrote it saw everything
        reconcile(namespace, name, body)


@kopf.on.event("apps", "v1", "deployments", labels={LABEL_MANAGED_BY: MANAGER, LABEL_DEPLOYMENT: kopf.PRESENT})
def on_child_event(body: Any, labels: dict, namespace: str, **_: Any) -> None:
    if not kube.own_write(body):  # the apply's own echo: the reconcile that applied it observed the result
        reconcile(namespace, labels[LABEL_DEPLOYMENT])


@kopf.on.event(GROUP, VERSION, TRAINING.plural)
def on_training_event(type: str, body: Any, name: str, namespace: str, memo: Any, followers: Any, **_: Any) -> None:
    """A new training version may be a candidate for the deployments that follow it, and only when something they
    read of the training changed (a new latest version, its output or storage, its deletion): its Jobs and runs do
    not concern them. What they last saw is kept in kopf's memo of the training (forgotten with it)."""
    state = _followed_state(type, body)
    if memo.get("followed") == state:
        return
    memo["followed"] = state
    for deployment in sorted(followers.get((namespace, name), ())):
        reconcile(namespace, deployment)


@kopf.timer(GROUP, VERSION, DEPLOYMENT.plural, interval=SETTINGS.resync_seconds, idle=SETTINGS.resync_seconds)
def resync(name: str, namespace: str, **_: Any) -> None:
    reconcile(namespace, name)


def _rollout_under_way(status: dict, **_: Any) -> bool:
    return ((status or {}).get("rollout") or {}).get("phase") not in (None, "Stable")


@kopf.timer(GROUP, VERSION, DEPLOYMENT.plural, interval=SETTINGS.analysis_interval_seconds, when=_rollout_under_way)
def analyse(name: str, namespace: str, **_: Any) -> None:
    """A challenger's analysis (and the watch after a promotion) is looked at every few seconds: the evidence
    grows with the traffic, not with events."""
    reconcile(namespace, name)
