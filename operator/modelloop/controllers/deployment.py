"""ModelDeployment controller: serves a model version, promotes new ones, rolls back failed rollouts.

Level-based: each reconcile resolves the candidate version (a fixed URI, or the followed
ModelTraining's latest or pinned version), observes the child Deployment's rollout, rolls back a
rollout past its progress deadline to the last version that was Available, decides promotion, applies
the children (Deployment, Service, NetworkPolicy, HPA, PDB) with server-side apply, and writes status.
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
from typing import Any

import kopf
from pydantic import ValidationError

from .. import kube, metrics
from ..cache import BoundedCache
from ..api.deployment import ModelDeploymentSpec
from ..api.training import ModelTrainingSpec
from ..artifacts import split_version_uri
from ..config import SETTINGS
from ..names import API_VERSION as API, DEPLOYMENT, GROUP, LABEL_DEPLOYMENT, LABEL_MANAGED_BY, MANAGER, TRAINING, VERSION
from ..reasons import DeploymentReason as R
from ..render.deployment import (
    ServedModel, render_deployment, render_hpa, render_network_policy, render_pdb, render_service, selector_string, url,
)
from ..rollout import (
    ROLLBACK, Candidate, ModelUnavailable, Rollout, deployment_conditions, observe, phase_of, promote, roll_back,
    rollback_version, rollout_state,
)
from ..status import merge_conditions, transition_events
from . import storage


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
    md = obj["metadata"]
    namespace, name = md["namespace"], md["name"]
    generation = md.get("generation", 1)
    status: dict[str, Any] = dict(obj.get("status") or {})
    try:
        spec = ModelDeploymentSpec.model_validate(obj["spec"])
    except ValidationError as e:
        raise kopf.PermanentError(f"spec is invalid: {e.errors()[0]['msg']}")

    unavailable: ModelUnavailable | None = None
    candidate: Candidate | None = None
    _follow(namespace, name, spec.model.from_training)  # before the read: a later change of it reconciles again
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
    dep = kube.get("apps/v1", "Deployment", namespace, name) if target else None

    r = Rollout(status, serving=status.get("modelVersion"), target=target, failed=list(status.get("failedVersions") or []),
                state=rollout_state(dep, status.get("modelVersion")) if target else "Missing")

    # Roll back a rollout that missed its deadline to the last version that was Available.
    back = rollback_version(r)
    if back is not None:
        model, metric, error = None, None, None
        try:
            model, metric = _served(namespace, status["lastAvailableUri"], credentials)
        except Exception as e:  # noqa: BLE001 - reported as RollbackFailed
            error = str(e)
        roll_back(r, back, model, metric, error, generation, spec.rollout.progress_deadline_seconds)

    # Promotion of the candidate.
    if candidate:
        promote(r, candidate, generation, spec.promotion)

    # Children.
    if r.target:
        dep = _apply(render_deployment(obj, spec, r.target), dep)
        _apply(render_service(obj))
        _apply(render_network_policy(obj))
        _apply_optional(namespace, name, "autoscaling/v2", "HorizontalPodAutoscaler", render_hpa(obj, spec))
        _apply_optional(namespace, name, "policy/v1", "PodDisruptionBudget", render_pdb(obj, spec))
        observe(r, rollout_state(dep, r.serving))
        metrics.DEPLOYMENT_VERSION.labels(namespace, name).set(r.serving)

    dst = (dep or {}).get("status") or {}
    conditions = merge_conditions(status.get("conditions"),
                                  deployment_conditions(r.state, unavailable, r.held, r.serving, dep), generation)
    status.update(observedGeneration=generation, conditions=conditions, phase=phase_of(r), url=url(name, namespace),
                  replicas=dst.get("replicas", 0), readyReplicas=dst.get("readyReplicas", 0),
                  selector=selector_string(name), failedVersions=r.failed or None)
    kube.write_status(obj, status)
    for outcome in r.counts:  # once the status that records them is written
        (metrics.ROLLBACKS.labels(namespace, name) if outcome == ROLLBACK
         else metrics.PROMOTIONS.labels(namespace, name, outcome)).inc()
    # Promoted already says a version is rolling out, RolloutComplete that it serves: one event per thing.
    events = r.events + transition_events(obj.get("status", {}).get("conditions"), conditions, decided=bool(r.events))
    kube.emit_events(obj, events)


# (kind, namespace, name) -> (digest of the manifest last applied, monotonic time, the object's generation after it).
# An apply that would send the same manifest again within SETTINGS.resync_seconds is skipped: a reconcile
# triggered by a child's status changes nothing there. One older than that is sent, so the periodic resync
# repairs whatever someone else changed or deleted; a Deployment found missing or edited (its generation
# moved) is applied at once.
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


# (kind, namespace) -> names of the HPAs (or PDBs) there that a ModelDeployment owns: one LIST the first time a
# namespace needs it (a deployment that renders none must delete a leftover), then kept by this process's own
# applies and deletes. Before, every reconcile of such a deployment made one GET for each kind.
_optional: dict[tuple[str, str], set[str]] = {}
_optional_guard = threading.Lock()


def _owned_optional(api_version: str, kind: str, namespace: str) -> set[str]:
    with _optional_guard:
        names = _optional.get((kind, namespace))
        if names is None:
            names = {o["metadata"]["name"] for o in kube.list_(api_version, kind, namespace, f"{LABEL_MANAGED_BY}={MANAGER}")
                     if any(r.get("kind") == KIND for r in o["metadata"].get("ownerReferences") or ())}
            _optional[(kind, namespace)] = names
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

# (namespace, training) -> the ModelDeployments that follow it, from their reconciles; and what each training's
# followers last saw of it. A ModelTraining event reaches only its followers, and only when something they
# read changed (a new latest version, its output or storage, its deletion): its Jobs and runs do not concern them.
_followers: dict[tuple[str, str], set[str]] = {}
_following: dict[tuple[str, str], str] = {}
_seen: dict[tuple[str, str], str] = {}
_index_guard = threading.Lock()


def _follow(namespace: str, deployment: str, training: str | None) -> None:
    with _index_guard:
        before = _following.pop((namespace, deployment), None)
        if before is not None:
            _followers.get((namespace, before), set()).discard(deployment)
        if training:
            _following[(namespace, deployment)] = training
            _followers.setdefault((namespace, training), set()).add(deployment)


def _followed_state(type_: str, body: Any) -> str:
    """What a following deployment reads of a ModelTraining."""
    spec = body.get("spec") or {}
    return json.dumps([type_ == "DELETED", (body.get("status") or {}).get("latestVersion"),
                       spec.get("output"), spec.get("storage")], sort_keys=True, default=str)


# ----------------------------------------------------------------------------- kopf wiring

@kopf.on.event(GROUP, VERSION, DEPLOYMENT.plural)
def on_deployment_event(type: str, body: Any, name: str, namespace: str, **_: Any) -> None:
    if type == "DELETED":
        _follow(namespace, name, None)
        with _optional_guard:  # the garbage collector removes its children
            for kind in ("HorizontalPodAutoscaler", "PodDisruptionBudget"):
                _optional.get((kind, namespace), set()).discard(name)
    elif not kube.own_write(body):  # its own status write: the reconcile that wrote it saw everything
        reconcile(namespace, name, body)


@kopf.on.event("apps", "v1", "deployments", labels={LABEL_MANAGED_BY: MANAGER, LABEL_DEPLOYMENT: kopf.PRESENT})
def on_child_event(body: Any, labels: dict, namespace: str, **_: Any) -> None:
    if not kube.own_write(body):  # the apply's own echo: the reconcile that applied it observed the result
        reconcile(namespace, labels[LABEL_DEPLOYMENT])


@kopf.on.event(GROUP, VERSION, TRAINING.plural)
def on_training_event(type: str, body: Any, name: str, namespace: str, **_: Any) -> None:
    """A new training version may be a candidate for the deployments that follow it."""
    state = _followed_state(type, body)
    with _index_guard:
        if _seen.get((namespace, name)) == state:
            return
        if type == "DELETED":
            _seen.pop((namespace, name), None)
        else:
            _seen[(namespace, name)] = state
        followers = sorted(_followers.get((namespace, name), ()))
    for deployment in followers:
        reconcile(namespace, deployment)


@kopf.timer(GROUP, VERSION, DEPLOYMENT.plural, interval=SETTINGS.resync_seconds, idle=SETTINGS.resync_seconds)
def resync(name: str, namespace: str, **_: Any) -> None:
    reconcile(namespace, name)
