"""Pieces every modelloop pod shares: security context, storage credentials, PVC mounts, overrides.

Pure functions of the resource's spec and the operator settings. What the operator sets (its
environment variables, labels, annotations) always wins over spec.podTemplate (docs/security.md).
"""
from __future__ import annotations

from typing import Any, Iterable

from ..api.common import (
    OPTIONAL_CREDENTIAL_KEYS, REQUIRED_CREDENTIAL_KEYS, RESERVED_ENV_PREFIX, PodOverrides, ResourceRequirements,
    StorageSpec,
)
from ..config import LABEL_MANAGED_BY, MANAGER, SETTINGS, Settings

TMP_VOLUME = "tmp"
# Label and annotation keys under this prefix belong to the operator; podTemplate cannot set them.
RESERVED_KEY_PREFIX = "modelloop.dev/"


def pod_security_context(settings: Settings = SETTINGS) -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": settings.run_as_user, "runAsGroup": settings.run_as_user,
            "fsGroup": settings.run_as_user, "seccompProfile": {"type": "RuntimeDefault"}}


def container_security_context() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]}}


def common_labels(component: str, instance: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": f"modelloop-{component}", "app.kubernetes.io/instance": instance,
            LABEL_MANAGED_BY: MANAGER, "app.kubernetes.io/part-of": "modelloop"}


def storage_env(storage: StorageSpec | None) -> list[dict[str, Any]]:
    """The named keys of the Secret become the AWS_* variables boto3 reads, one secretKeyRef each (the
    optional ones may be absent); no other key of the Secret reaches the pod, and the values never
    pass through the operator."""
    if not storage or not storage.secret_ref:
        return []
    name = storage.secret_ref.name
    return ([{"name": k, "valueFrom": {"secretKeyRef": {"name": name, "key": k}}} for k in REQUIRED_CREDENTIAL_KEYS]
            + [{"name": k, "valueFrom": {"secretKeyRef": {"name": name, "key": k, "optional": True}}}
               for k in OPTIONAL_CREDENTIAL_KEYS])


def pvc_claims(uris: Iterable[str | None]) -> list[str]:
    """Claims named by pvc:// URIs, in first-seen order."""
    claims: list[str] = []
    for uri in uris:
        if uri and uri.startswith("pvc://"):
            claim = uri[len("pvc://"):].split("/", 1)[0]
            if claim not in claims:
                claims.append(claim)
    return claims


def volumes_and_mounts(claims: list[str], settings: Settings = SETTINGS, read_only: bool = False,
                       writable: Iterable[str] = ()) -> tuple[list[dict], list[dict]]:
    """A writable /tmp (the root filesystem is read-only) and each claim at <pvcRoot>/<claim>; with
    `read_only`, every claim but those in `writable` is mounted read-only."""
    volumes: list[dict] = [{"name": TMP_VOLUME, "emptyDir": {"sizeLimit": "2Gi"}}]
    mounts: list[dict] = [{"name": TMP_VOLUME, "mountPath": "/tmp"}]
    writable = set(writable)
    for i, claim in enumerate(claims):
        ro = read_only and claim not in writable
        volumes.append({"name": f"pvc-{i}", "persistentVolumeClaim": {"claimName": claim, "readOnly": ro}})
        mounts.append({"name": f"pvc-{i}", "mountPath": f"{settings.pvc_root}/{claim}", "readOnly": ro})
    return volumes, mounts


def base_env(settings: Settings = SETTINGS) -> list[dict[str, Any]]:
    return [
        {"name": "MODELLOOP_PVC_ROOT", "value": settings.pvc_root},
        {"name": "TMPDIR", "value": "/tmp"},
        {"name": "HOME", "value": "/tmp"},
        {"name": "MODELLOOP_POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]


# Without spec.resources a pod is not BestEffort (the first evicted, unbounded in memory): these apply.
DEFAULT_SERVER_RESOURCES = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}
DEFAULT_TRAINING_RESOURCES = {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "4Gi"}}


def resources(spec: ResourceRequirements | None, default: dict[str, dict[str, str]]) -> dict[str, Any]:
    return spec.wire() if spec else {k: dict(v) for k, v in default.items()}


def apply_overrides(pod_spec: dict[str, Any], pod_meta: dict[str, Any], container: dict[str, Any],
                    overrides: PodOverrides | None) -> None:
    """Fold spec.podTemplate into a rendered pod template (in place). The operator's own labels,
    annotations and environment variables win; podTemplate cannot set keys under modelloop.dev/ nor
    variables starting with MODELLOOP_ (the schema refuses those too; this also holds for objects
    stored before it did)."""
    if not overrides:
        return
    o = overrides
    if o.image:
        container["image"] = o.image
    if o.labels:
        pod_meta["labels"] = {**_unreserved(o.labels), **pod_meta.get("labels", {})}  # selectors depend on ours
    if o.annotations:
        pod_meta["annotations"] = {**_unreserved(o.annotations), **pod_meta.get("annotations", {})}
    if o.node_selector:
        pod_spec["nodeSelector"] = dict(o.node_selector)
    if o.tolerations:
        pod_spec["tolerations"] = [t.wire() for t in o.tolerations]
    if o.service_account_name:
        pod_spec["serviceAccountName"] = o.service_account_name
    if o.priority_class_name:
        pod_spec["priorityClassName"] = o.priority_class_name
    if o.env:
        ours = {e["name"] for e in container.get("env", [])}
        container["env"] = container.get("env", []) + [
            e.wire() for e in o.env if e.name not in ours and not e.name.startswith(RESERVED_ENV_PREFIX)]


def _unreserved(items: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in items.items() if not k.startswith(RESERVED_KEY_PREFIX)}
