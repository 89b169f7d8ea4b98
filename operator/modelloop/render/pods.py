"""Pieces every modelloop pod shares: security context, storage credentials, PVC mounts, overrides.

Pure functions of the resource's spec and the operator settings.
"""
from __future__ import annotations

from typing import Any, Iterable

from ..api.common import PodOverrides, ResourceRequirements, StorageSpec
from ..config import LABEL_MANAGED_BY, MANAGER, SETTINGS, Settings

TMP_VOLUME = "tmp"


def pod_security_context(settings: Settings = SETTINGS) -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": settings.run_as_user, "runAsGroup": settings.run_as_user,
            "fsGroup": settings.run_as_user, "seccompProfile": {"type": "RuntimeDefault"}}


def container_security_context() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]}}


def common_labels(component: str, instance: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": f"modelloop-{component}", "app.kubernetes.io/instance": instance,
            LABEL_MANAGED_BY: MANAGER, "app.kubernetes.io/part-of": "modelloop"}


def storage_env_from(storage: StorageSpec | None) -> list[dict[str, Any]]:
    """The Secret's keys become the AWS_* variables boto3 reads; the values never pass through us."""
    if storage and storage.secret_ref:
        return [{"secretRef": {"name": storage.secret_ref.name}}]
    return []


def pvc_claims(uris: Iterable[str | None]) -> list[str]:
    """Claims named by pvc:// URIs, in first-seen order."""
    claims: list[str] = []
    for uri in uris:
        if uri and uri.startswith("pvc://"):
            claim = uri[len("pvc://"):].split("/", 1)[0]
            if claim not in claims:
                claims.append(claim)
    return claims


def volumes_and_mounts(claims: list[str], settings: Settings = SETTINGS, read_only: bool = False
                       ) -> tuple[list[dict], list[dict]]:
    """A writable /tmp (the root filesystem is read-only) and each claim at <pvcRoot>/<claim>."""
    volumes: list[dict] = [{"name": TMP_VOLUME, "emptyDir": {"sizeLimit": "2Gi"}}]
    mounts: list[dict] = [{"name": TMP_VOLUME, "mountPath": "/tmp"}]
    for i, claim in enumerate(claims):
        volumes.append({"name": f"pvc-{i}", "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}})
        mounts.append({"name": f"pvc-{i}", "mountPath": f"{settings.pvc_root}/{claim}", "readOnly": read_only})
    return volumes, mounts


def base_env(settings: Settings = SETTINGS) -> list[dict[str, Any]]:
    return [
        {"name": "MODELLOOP_PVC_ROOT", "value": settings.pvc_root},
        {"name": "TMPDIR", "value": "/tmp"},
        {"name": "HOME", "value": "/tmp"},
        {"name": "MODELLOOP_POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]


def resources(spec: ResourceRequirements | None) -> dict[str, Any]:
    return spec.wire() if spec else {}


def apply_overrides(pod_spec: dict[str, Any], pod_meta: dict[str, Any], container: dict[str, Any],
                    overrides: PodOverrides | None) -> None:
    """Fold spec.podTemplate into a rendered pod template (in place)."""
    if not overrides:
        return
    o = overrides
    if o.image:
        container["image"] = o.image
    if o.labels:
        pod_meta["labels"] = {**o.labels, **pod_meta.get("labels", {})}  # ours win: selectors depend on them
    if o.annotations:
        pod_meta.setdefault("annotations", {}).update(o.annotations)
    if o.node_selector:
        pod_spec["nodeSelector"] = dict(o.node_selector)
    if o.tolerations:
        pod_spec["tolerations"] = [t.wire() for t in o.tolerations]
    if o.service_account_name:
        pod_spec["serviceAccountName"] = o.service_account_name
    if o.priority_class_name:
        pod_spec["priorityClassName"] = o.priority_class_name
    if o.env:
        container["env"] = container.get("env", []) + [e.wire() for e in o.env]
