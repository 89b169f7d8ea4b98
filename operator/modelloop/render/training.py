"""ModelTraining → the Job of one training run. Pure."""
from __future__ import annotations

import json
from typing import Any

from ..api.training import ModelTrainingSpec
from ..config import SETTINGS, Settings
from ..meta import owner_reference
from ..training.errors import USER_ERROR_EXIT_CODES
from . import pods

LABEL_TRAINING = "modelloop.dev/training"
LABEL_VERSION = "modelloop.dev/version"
ANNOTATION_TRIGGER = "modelloop.dev/trigger"
# The spec generation a Job trains: a Job adopted after a restart is recorded with it, not with the current one.
ANNOTATION_GENERATION = "modelloop.dev/generation"
# USER_ERROR_EXIT_CODES: trainer exit codes that mean "the input is wrong" (invalid spec, invalid
# dataset, fit failed, version exists): retrying the pod cannot help, so the Job fails at once instead
# of spending its backoffLimit. Unreadable data and output errors may be transient and are retried.


def job_name(training: str, version: int) -> str:
    """Deterministic, so a restarted operator finds the run's Job instead of creating another."""
    return f"{training}-v{version}"


def effective_spec(spec: ModelTrainingSpec, dataset_uri: str | None) -> ModelTrainingSpec:
    """The spec a run trains with: a retrain request may bring fresh data."""
    if not dataset_uri:
        return spec
    return spec.model_copy(update={"dataset": spec.dataset.model_copy(update={"uri": dataset_uri})})


def render_job(training: dict[str, Any], spec: ModelTrainingSpec, version: int, trigger: str,
               settings: Settings = SETTINGS) -> dict[str, Any]:
    md = training["metadata"]
    name = job_name(md["name"], version)
    labels = {**pods.common_labels("trainer", md["name"]), LABEL_TRAINING: md["name"], LABEL_VERSION: str(version)}
    claims = pods.pvc_claims([spec.dataset.uri, spec.output.uri])
    volumes, mounts = pods.volumes_and_mounts(claims, settings)
    container: dict[str, Any] = {
        "name": "trainer",
        "image": settings.runtime_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["modelloop-train"],
        "args": ["--version", str(version)],
        "env": [
            *pods.base_env(settings),
            {"name": "MODELLOOP_TRAINING_SPEC", "value": json.dumps(spec.wire(), sort_keys=True)},
            {"name": "MODELLOOP_TRAINING_NAME", "value": md["name"]},
            {"name": "MODELLOOP_TRAINING_NAMESPACE", "value": md["namespace"]},
            {"name": "MODELLOOP_TRAINING_UID", "value": md["uid"]},
            {"name": "MODELLOOP_TRAINING_GENERATION", "value": str(md.get("generation", 1))},
            {"name": "MODELLOOP_TRAINING_RUN", "value": name},
            {"name": "MODELLOOP_TERMINATION_LOG", "value": "/dev/termination-log"},
            *pods.storage_env(spec.storage),
        ],
        "resources": pods.resources(spec.resources, pods.DEFAULT_TRAINING_RESOURCES),
        "securityContext": pods.container_security_context(),
        "volumeMounts": mounts,
        "terminationMessagePath": "/dev/termination-log",
        # Only what the trainer writes (a reason and a message without data values), never log lines.
        "terminationMessagePolicy": "File",
    }
    pod_meta: dict[str, Any] = {"labels": dict(labels)}
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "securityContext": pods.pod_security_context(settings),
        "automountServiceAccountToken": False,
        # No docker-link variables for every Service of the namespace (a Service named like an env setting
        # would override it, e.g. MODELLOOP_*_PORT).
        "enableServiceLinks": False,
        "containers": [container],
        "volumes": volumes,
    }
    pods.apply_overrides(pod_spec, pod_meta, container, spec.pod_template)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name, "namespace": md["namespace"], "labels": labels,
            "annotations": {ANNOTATION_TRIGGER: trigger, ANNOTATION_GENERATION: str(md.get("generation", 1))},
            "ownerReferences": [owner_reference(training)],
        },
        "spec": {
            "backoffLimit": spec.backoff_limit,
            "activeDeadlineSeconds": spec.active_deadline_seconds,
            "podFailurePolicy": {"rules": [{"action": "FailJob", "onExitCodes": {
                "containerName": "trainer", "operator": "In", "values": USER_ERROR_EXIT_CODES}}]},
            "template": {"metadata": pod_meta, "spec": pod_spec},
        },
    }
