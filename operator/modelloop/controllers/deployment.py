"""ModelDeployment controller: serves a model version, promotes new ones, rolls back failed rollouts.

Level-based: each reconcile resolves the candidate version (a fixed URI, or the followed
ModelTraining's latest or pinned version), observes the child Deployment's rollout, rolls back a
rollout past its progress deadline to the last version that was Available, decides promotion, applies
the children (Deployment, Service, NetworkPolicy, HPA, PDB) with server-side apply, and writes status.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import kopf
from pydantic import ValidationError

from .. import kube, metrics
from ..api.deployment import ModelDeploymentSpec
from ..api.training import ModelTrainingSpec
from ..artifacts import split_version_uri
from ..config import LABEL_MANAGED_BY, MANAGER, SETTINGS
from ..promotion import should_promote
from ..render.deployment import (
    ANNOTATION_VERSION, LABEL_DEPLOYMENT, ServedModel, render_deployment, render_hpa, render_network_policy,
    render_pdb, render_service, selector_string, url,
)
from ..status import Cond, changed_conditions, merge_conditions
from . import storage


API = "modelloop.dev/v1alpha1"
KIND = "ModelDeployment"
# Condition reasons that need someone's attention (Warning events); the rest is normal progress.
PROBLEMS = frozenset({"RolloutFailed", "ProgressDeadlineExceeded", "TrainingNotFound", "ArtifactUnavailable",
                      "SecretNotFound", "StorageUnavailable"})


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


# ----------------------------------------------------------------------------- pure decisions

def rollout_state(dep: dict | None, version: int | None) -> str:
    """Missing, Progressing, Available or Failed (past its progress deadline), for the rollout of `version`."""
    if dep is None:
        return "Missing"
    annotations = dep["spec"]["template"]["metadata"].get("annotations") or {}
    st = dep.get("status") or {}
    if annotations.get(ANNOTATION_VERSION) != str(version) or st.get("observedGeneration", 0) < dep["metadata"]["generation"]:
        return "Progressing"
    for c in st.get("conditions") or ():
        if c["type"] == "Progressing" and c["status"] == "False" and c.get("reason") == "ProgressDeadlineExceeded":
            return "Failed"
    want = dep["spec"].get("replicas", 1)
    if (st.get("updatedReplicas", 0) >= want and st.get("availableReplicas", 0) >= want
            and st.get("replicas", 0) == st.get("updatedReplicas", 0)):
        return "Available"
    return "Progressing"


def deployment_conditions(state: str, unavailable: ModelUnavailable | None, held: str | None,
                          serving: int | None, dep: dict | None) -> list[Cond]:
    st = (dep or {}).get("status") or {}
    available = any(c["type"] == "Available" and c["status"] == "True" for c in st.get("conditions") or ())
    conds = [Cond.of("Available", available, "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
                     f"{st.get('availableReplicas', 0)} of {(dep or {}).get('spec', {}).get('replicas', 0)} replicas available")]
    if unavailable and serving is None:
        conds += [Cond.of("Progressing", False, unavailable.reason, unavailable.message),
                  Cond.of("Reconciling", not unavailable.stalled, unavailable.reason, unavailable.message),
                  Cond.of("Stalled", unavailable.stalled, unavailable.reason, unavailable.message),
                  Cond.of("Ready", False, unavailable.reason, unavailable.message)]
        return conds
    progressing = state in ("Progressing", "Missing")
    conds.append(Cond.of("Progressing", progressing, "RollingOut" if progressing else "RolloutComplete",
                         f"rolling out version {serving}" if progressing else f"version {serving} is rolled out"))
    if unavailable and unavailable.reason == "StorageUnavailable" and not progressing:
        # Serving what it served, but a newer candidate cannot be looked at until the store answers.
        conds.append(Cond.of("Reconciling", True, unavailable.reason, unavailable.message))
    else:
        conds.append(Cond.of("Reconciling", progressing, "RollingOut" if progressing else "Idle",
                             f"rolling out version {serving}" if progressing else ""))
    if state == "Failed":
        msg = f"version {serving} did not become Available within the progress deadline and there is no earlier version to roll back to"
        conds += [Cond.of("Stalled", True, "ProgressDeadlineExceeded", msg), Cond.of("Ready", False, "RolloutFailed", msg)]
        return conds
    conds.append(Cond.of("Stalled", False, "Progressing" if progressing else "Serving"))
    if state == "Available":
        notes = [note for note in (held, unavailable and f"{unavailable.reason}: {unavailable.message}") if note]
        conds.append(Cond.of("Ready", True, "Serving", "; ".join([f"version {serving} is serving", *notes])))
    else:
        conds.append(Cond.of("Ready", False, "RollingOut", f"version {serving} is rolling out"))
    return conds


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


def resolve_candidate(namespace: str, spec: ModelDeploymentSpec, credentials: storage.Credentials) -> Candidate:
    m = spec.model
    try:
        if m.uri:
            model, metric = _served(namespace, m.uri.rstrip("/"), credentials)
            return Candidate(model, metric, pinned=True)
        training = kube.get(API, "ModelTraining", namespace, m.from_training)
        if training is None:
            raise ModelUnavailable("TrainingNotFound", f"spec.model.fromTraining: ModelTraining '{m.from_training}' "
                                   f"not found in namespace {namespace}", stalled=True)
        tstatus = training.get("status") or {}
        pinned = m.version not in (None, "latest")
        version = int(m.version) if pinned else tstatus.get("latestVersion")
        if not version:
            raise ModelUnavailable("WaitingForTraining", f"ModelTraining '{m.from_training}' has no good version yet",
                                   stalled=False)
        output = ModelTrainingSpec.model_validate(training["spec"]).output.uri.rstrip("/")
        model, metric = _served(namespace, f"{output}/v{version}", credentials,
                                field=f"spec.output.uri of ModelTraining {m.from_training}")
        return Candidate(model, metric, pinned=pinned)
    except ModelUnavailable:
        raise
    except storage.StorageAccessError as e:
        raise ModelUnavailable("ArtifactUnavailable", str(e)[:1024], stalled=True) from e
    except Exception as e:  # noqa: BLE001 - unreadable or tampered artifacts are reported, never crash
        if storage.store_unavailable(e):  # nothing wrong with the artifact as far as we know: wait for the store
            raise ModelUnavailable("StorageUnavailable", f"the model store cannot be read: {e}"[:1024],
                                   stalled=False) from e
        raise ModelUnavailable("ArtifactUnavailable", f"model artifact cannot be used: {e}"[:1024], stalled=False) from e


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
    events: list[tuple[str, str, str]] = []
    try:
        spec = ModelDeploymentSpec.model_validate(obj["spec"])
    except ValidationError as e:
        raise kopf.PermanentError(f"spec is invalid: {e.errors()[0]['msg']}")

    unavailable: ModelUnavailable | None = None
    candidate: Candidate | None = None
    if spec.storage is None:  # the servers read the artifacts with the training's credentials
        spec = spec.model_copy(update={"storage": _training_storage(namespace, spec)})
    try:
        credentials = storage.credentials_from_secret(namespace, spec.storage)
        candidate = resolve_candidate(namespace, spec, credentials)
    except storage.StorageAccessError as e:
        unavailable, credentials = ModelUnavailable("SecretNotFound", str(e), stalled=True), storage.ANONYMOUS
    except ModelUnavailable as e:
        unavailable = e

    dep = kube.get("apps/v1", "Deployment", namespace, name)
    serving = status.get("modelVersion")
    target = _status_target(namespace, status, credentials)
    state = rollout_state(dep, serving) if target else "Missing"
    failed = list(status.get("failedVersions") or [])

    # Roll back a rollout that missed its deadline to the last version that was Available.
    if state == "Failed" and status.get("lastAvailableVersion") and status["lastAvailableVersion"] != serving:
        back = status["lastAvailableVersion"]
        try:
            model, metric = _served(namespace, status["lastAvailableUri"], credentials)
        except Exception as e:  # noqa: BLE001
            events.append(("Warning", "RollbackFailed", f"cannot roll back to version {back}: {e}"))
        else:
            failed = sorted(set(failed) | {serving})[-20:]
            status["rollbackGeneration"] = generation
            events.append(("Warning", "RolledBack", f"version {serving} did not become Available within "
                           f"{spec.rollout.progress_deadline_seconds}s; rolled back to version {back}"))
            metrics.ROLLBACKS.labels(namespace, name).inc()
            status.update(previousVersion=serving, modelVersion=back, modelUri=model.uri, modelSha256=model.sha256,
                          modelMetadataSha256=model.metadata_sha256, metric=metric)
            target, serving, state = model, back, "Progressing"

    # Promotion of the candidate.
    held = None
    if candidate and candidate.model.version != serving:
        # A version that failed its rollout is not tried again by itself; a pinned one is retried
        # once the user edits the spec after the rollback (their new intent).
        retry = candidate.pinned and generation > (status.get("rollbackGeneration") or 0)
        if candidate.model.version in failed and not retry:
            held = (f"version {candidate.model.version} failed its rollout and is not retried"
                    + ("; edit spec.model to retry it" if candidate.pinned else ""))
            status.update(candidateVersion=candidate.model.version, promotionMessage=held)
        else:
            decision = None if candidate.pinned else should_promote(
                spec.promotion, candidate.model.version, candidate.metric, serving, status.get("metric"))
            if decision is None or decision.promote:
                if serving is not None:
                    status["previousVersion"] = serving
                status.update(modelVersion=candidate.model.version, modelUri=candidate.model.uri,
                              modelSha256=candidate.model.sha256,
                              modelMetadataSha256=candidate.model.metadata_sha256, metric=candidate.metric,
                              candidateVersion=None, promotionMessage=None)
                if candidate.model.version in failed:  # a pinned retry of a version that failed before
                    failed.remove(candidate.model.version)
                target, serving, state = candidate.model, candidate.model.version, "Progressing"
                events.append(("Normal", "Promoted", f"rolling out version {serving}"
                               + (f" ({candidate.metric['name']}={candidate.metric['value']:.4g})" if candidate.metric else "")))
                metrics.PROMOTIONS.labels(namespace, name, "promoted").inc()
            else:
                held = decision.message
                if status.get("promotionMessage") != held:
                    events.append(("Normal", "PromotionHeld", held))
                    metrics.PROMOTIONS.labels(namespace, name, decision.reason).inc()
                status.update(candidateVersion=candidate.model.version, promotionMessage=held)
    elif candidate:
        status.update(candidateVersion=None, promotionMessage=None)

    # Children.
    if target:
        dep = kube.apply(render_deployment(obj, spec, target))
        kube.apply(render_service(obj))
        kube.apply(render_network_policy(obj))
        _apply_optional(namespace, name, "autoscaling/v2", "HorizontalPodAutoscaler", render_hpa(obj, spec))
        _apply_optional(namespace, name, "policy/v1", "PodDisruptionBudget", render_pdb(obj, spec))
        state = rollout_state(dep, serving) if state != "Failed" else state
        if state == "Available" and status.get("lastAvailableVersion") != serving:
            status.update(lastAvailableVersion=serving, lastAvailableUri=target.uri)
            events.append(("Normal", "RolloutComplete", f"version {serving} is Available"))
        metrics.DEPLOYMENT_VERSION.labels(namespace, name).set(serving)

    dst = (dep or {}).get("status") or {}
    conditions = merge_conditions(status.get("conditions"),
                                  deployment_conditions(state, unavailable, held, serving, dep), generation)
    phase = ("Failed" if state == "Failed" else "Available" if state == "Available" else
             "Pending" if target is None else "Progressing")
    status.update(observedGeneration=generation, conditions=conditions, phase=phase, url=url(name, namespace),
                  replicas=dst.get("replicas", 0), readyReplicas=dst.get("readyReplicas", 0),
                  selector=selector_string(name), failedVersions=failed or None)
    kube.write_status(obj, status)
    reported: set[tuple[str, str]] = set()
    for c in changed_conditions(obj.get("status", {}).get("conditions"), conditions):
        # Ready and Stalled transitions; and a store that stopped answering while a version is served
        wanted = ((c["type"] in ("Ready", "Stalled") and not (c["type"] == "Stalled" and c["status"] == "False"))
                  or (c["type"] == "Reconciling" and c["reason"] == "StorageUnavailable"))
        if wanted and (c["reason"], c["message"]) not in reported:
            reported.add((c["reason"], c["message"]))
            events.append(("Warning" if c["reason"] in PROBLEMS else "Normal",
                           c["reason"], c["message"] or f"{c['type']} is {c['status']}"))
    kube.emit_events(obj, events)


def _training_storage(namespace: str, spec: ModelDeploymentSpec):
    """Without its own spec.storage, a deployment reads artifacts with its training's credentials."""
    if not spec.model.from_training:
        return None
    training = kube.get(API, "ModelTraining", namespace, spec.model.from_training)
    return ModelTrainingSpec.model_validate(training["spec"]).storage if training else None


def _apply_optional(namespace: str, name: str, api_version: str, kind: str, obj: dict | None) -> None:
    if obj is None:
        existing = kube.get(api_version, kind, namespace, name)
        if existing and any(o.get("kind") == KIND for o in existing["metadata"].get("ownerReferences") or ()):
            kube.delete(api_version, kind, namespace, name)
    else:
        kube.apply(obj)


# ----------------------------------------------------------------------------- kopf wiring

@kopf.on.event("modelloop.dev", "v1alpha1", "modeldeployments")
def on_deployment_event(type: str, name: str, namespace: str, **_: Any) -> None:
    if type != "DELETED":
        reconcile(namespace, name)


@kopf.on.event("apps", "v1", "deployments", labels={LABEL_MANAGED_BY: MANAGER, LABEL_DEPLOYMENT: kopf.PRESENT})
def on_child_event(labels: dict, namespace: str, **_: Any) -> None:
    reconcile(namespace, labels[LABEL_DEPLOYMENT])


@kopf.on.event("modelloop.dev", "v1alpha1", "modeltrainings")
def on_training_event(name: str, namespace: str, **_: Any) -> None:
    """A new training version may be a candidate for the deployments that follow it."""
    for md in kube.list_(API, KIND, namespace):
        if (md["spec"].get("model") or {}).get("fromTraining") == name:
            reconcile(namespace, md["metadata"]["name"])


@kopf.timer("modelloop.dev", "v1alpha1", "modeldeployments", interval=SETTINGS.resync_seconds, idle=5)
def resync(name: str, namespace: str, **_: Any) -> None:
    reconcile(namespace, name)
