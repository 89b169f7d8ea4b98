"""Operator settings, read once from the environment: the one place their defaults live."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from . import __version__

LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "modelloop"
FIELD_MANAGER = "modelloop-operator"


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


SETTINGS = Settings()
