"""Operator settings, read once from the environment: the one place their defaults live."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from . import __version__
from .artifacts.limits import ArtifactLimits

from .names import FIELD_MANAGER, LABEL_MANAGED_BY, MANAGER  # noqa: F401 - re-exported for the controllers


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def _labels(text: str) -> dict[str, str]:
    """`k=v,k2=v2` → {k: v, k2: v2}."""
    pairs = (item.split("=", 1) for item in text.split(",") if item.strip())
    return {k.strip(): v.strip() for k, v in pairs}


@dataclass(frozen=True)
class Settings:
    runtime_image: str = field(default_factory=lambda: os.environ.get(
        "MODELLOOP_RUNTIME_IMAGE", f"ghcr.io/modelloop/runtime:{__version__}"))
    image_pull_policy: str = field(default_factory=lambda: os.environ.get("MODELLOOP_IMAGE_PULL_POLICY", "IfNotPresent"))
    metrics_port: int = field(default_factory=lambda: int(os.environ.get("MODELLOOP_METRICS_PORT", "9090")))
    pvc_root: str = "/var/lib/modelloop/pvc"
    run_as_user: int = 65532
    # How often each resource is re-checked even without events (level-based safety net).
    resync_seconds: float = field(default_factory=lambda: float(os.environ.get("MODELLOOP_RESYNC_SECONDS", "30")))
    # How often a ModelDeployment with a challenger (or a new champion under watch) is looked at.
    analysis_interval_seconds: float = field(default_factory=lambda: float(os.environ.get(
        "MODELLOOP_ANALYSIS_INTERVAL_SECONDS", "10")))

    # Where the operator runs: the NetworkPolicy of each ModelDeployment opens the sketch port to the
    # pods with these labels in this namespace only (the chart sets both).
    operator_namespace: str = field(default_factory=lambda: os.environ.get(
        "MODELLOOP_OPERATOR_NAMESPACE", "modelloop-system"))
    operator_pod_labels: dict[str, str] = field(default_factory=lambda: _labels(os.environ.get(
        "MODELLOOP_OPERATOR_POD_LABELS", "app.kubernetes.io/name=modelloop-operator")))

    # file:// and pvc:// URIs are paths on the operator's own filesystem when the operator reads them:
    # refused on behalf of resources unless enabled (development on one machine, the tests).
    local_storage: bool = field(default_factory=lambda: _flag("MODELLOOP_OPERATOR_LOCAL_STORAGE"))

    # Threads of kopf's pool, which runs every reconcile.
    workers: int = field(default_factory=lambda: int(os.environ.get("MODELLOOP_WORKERS", "16")))
    # Drift checks run in their own bounded pool, never in kopf's (which the reconciles share).
    drift_workers: int = field(default_factory=lambda: int(os.environ.get("MODELLOOP_DRIFT_WORKERS", "4")))
    # One check fetches every pod's sketch concurrently, within this deadline in total.
    sketch_deadline_seconds: float = field(default_factory=lambda: float(os.environ.get(
        "MODELLOOP_SKETCH_DEADLINE_SECONDS", "10")))
    max_sketch_bytes: int = field(default_factory=lambda: int(os.environ.get(
        "MODELLOOP_MAX_SKETCH_BYTES", str(8 * 1024 * 1024))))
    # What the operator reads from stores on behalf of resources, at most (MODELLOOP_MAX_MODEL_BYTES and
    # MODELLOOP_MAX_METADATA_BYTES, defaults in modelloop.artifacts.limits, shared with the model server).
    max_model_bytes: int = field(default_factory=lambda: ArtifactLimits.from_environment().model_bytes)
    max_metadata_bytes: int = field(default_factory=lambda: ArtifactLimits.from_environment().metadata_bytes)
    max_dataset_bytes: int = field(default_factory=lambda: int(os.environ.get(
        "MODELLOOP_MAX_DATASET_BYTES", str(512 * 1024 * 1024))))
    # High availability: replicas elect a leader on a Lease in operator_namespace; only the leader reconciles.
    leader_elect: bool = field(default_factory=lambda: _flag("MODELLOOP_LEADER_ELECT"))
    leader_lease: str = field(default_factory=lambda: os.environ.get("MODELLOOP_LEADER_LEASE", "modelloop-operator"))
    lease_duration_seconds: float = field(default_factory=lambda: float(os.environ.get(
        "MODELLOOP_LEASE_DURATION_SECONDS", "15")))
    lease_renew_deadline_seconds: float = field(default_factory=lambda: float(os.environ.get(
        "MODELLOOP_LEASE_RENEW_DEADLINE_SECONDS", "10")))
    lease_retry_seconds: float = field(default_factory=lambda: float(os.environ.get(
        "MODELLOOP_LEASE_RETRY_SECONDS", "2")))
    # Entries of each in-memory cache (verified artifact metadata).
    cache_entries: int = field(default_factory=lambda: int(os.environ.get("MODELLOOP_CACHE_ENTRIES", "256")))
    # Bytes the verified-metadata cache holds at most (its summaries: digests, metrics, schema, reference sketch).
    verified_cache_bytes: int = field(default_factory=lambda: int(os.environ.get(
        "MODELLOOP_VERIFIED_CACHE_BYTES", str(64 * 1024 * 1024))))
    # metadata.json documents parsed at once (each up to ~60 MB for a moment), whatever the number of workers.
    verify_concurrency: int = field(default_factory=lambda: int(os.environ.get("MODELLOOP_VERIFY_CONCURRENCY", "2")))


SETTINGS = Settings()
