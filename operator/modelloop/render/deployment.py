"""ModelDeployment → its children: Deployment, Service, NetworkPolicy, HPA (with autoscaling), PDB
(more than one replica). Pure functions of the resource and the model version it serves."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..api.deployment import SERVER_PORT, SKETCH_PORT, ModelDeploymentSpec
from ..config import SETTINGS, Settings
from ..meta import owner_reference, parse_duration
from ..names import (
    ANNOTATION_METADATA_SHA256, ANNOTATION_MODEL_SHA256, ANNOTATION_MODEL_URI, ANNOTATION_MODEL_VERSION, LABEL_CHALLENGER,
    LABEL_DEPLOYMENT,
)
from . import pods


@dataclass(frozen=True)
class ServedModel:
    """The version a Deployment's pods load, and the digests they must find (model file, metadata.json)."""

    version: int
    uri: str
    sha256: str
    metadata_sha256: str | None  # None only for a status written before the operator pinned metadata


def selector(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "modelloop-server", LABEL_DEPLOYMENT: name}


def selector_string(name: str) -> str:
    return ",".join(f"{k}={v}" for k, v in selector(name).items())


def url(name: str, namespace: str) -> str:
    return f"http://{name}.{namespace}.svc.cluster.local:{SERVER_PORT}/v2/models/{name}"


def _meta(owner: dict, name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"name": name, "namespace": owner["metadata"]["namespace"], "labels": labels,
            "ownerReferences": [owner_reference(owner)]}


def desired_replicas(spec: ModelDeploymentSpec) -> int:
    return spec.autoscaling.min_replicas if spec.autoscaling else (1 if spec.replicas is None else spec.replicas)


def challenger_name(name: str) -> str:
    """The challenger's Deployment, Service and NetworkPolicy (a ModelDeployment name has at most 52 characters)."""
    return f"{name}-challenger"


def challenger_selector(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "modelloop-server", LABEL_CHALLENGER: name}


def shadow_target(name: str, namespace: str) -> str:
    return f"{challenger_name(name)}.{namespace}.svc.cluster.local:{SERVER_PORT}"


def render_deployment(owner: dict, spec: ModelDeploymentSpec, model: ServedModel,
                      settings: Settings = SETTINGS, replicas: int | None = None) -> dict[str, Any]:
    """The champion: the pods behind the Service. With strategy shadow they copy requests to the challenger's
    Service (a challenger that is absent costs a dropped copy: docs/challenger.md); `replicas` overrides the
    spec's count (a canary by replicas gives some of them to the challenger)."""
    name = owner["metadata"]["name"]
    labels = {**pods.common_labels("server", name), **selector(name)}
    shadow = (["--shadow-to", shadow_target(name, owner["metadata"]["namespace"]),
               "--shadow-fraction", f"{spec.rollout.shadow.fraction:g}"] if spec.rollout.strategy == "shadow" else [])
    return _server_deployment(owner, spec, model, name, selector(name), labels, labels, shadow,
                              None if spec.autoscaling else (desired_replicas(spec) if replicas is None else replicas),
                              settings)


def render_challenger(owner: dict, spec: ModelDeploymentSpec, model: ServedModel, replicas: int, in_service: bool,
                      settings: Settings = SETTINGS) -> dict[str, Any]:
    """The challenger: the candidate version's own Deployment. Its pods join the champion's Service only in a
    canary by replicas (`in_service`); shadowing, or behind a Gateway, they are reached through their own Service."""
    name = owner["metadata"]["name"]
    own = challenger_selector(name)
    labels = {**pods.common_labels("server", name), **own}
    pod_labels = {**labels, **(selector(name) if in_service else {})}
    # The Deployment itself carries the ModelDeployment's label: its events reconcile the ModelDeployment.
    return _server_deployment(owner, spec, model, challenger_name(name), own, {**labels, LABEL_DEPLOYMENT: name},
                              pod_labels, [], replicas, settings)


def _server_deployment(owner: dict, spec: ModelDeploymentSpec, model: ServedModel, name: str,
                       match_labels: dict[str, str], labels: dict[str, str], pod_labels: dict[str, str],
                       extra_args: list[str], replicas: int | None, settings: Settings) -> dict[str, Any]:
    model_name = owner["metadata"]["name"]  # what clients call it, on either Deployment
    feedback_uri = spec.feedback.uri if spec.feedback else None
    claims = pods.pvc_claims([model.uri, feedback_uri])
    # The servers only read the model; with feedback on they write records to its store.
    volumes, mounts = pods.volumes_and_mounts(claims, settings, read_only=True,
                                              writable=pods.pvc_claims([feedback_uri]))
    container = _server_container(model_name, spec, model, extra_args, mounts, settings)
    pod_meta: dict[str, Any] = {
        "labels": dict(pod_labels),
        # The served version is part of the pod template: a new version is a rolling update.
        "annotations": {ANNOTATION_MODEL_VERSION: str(model.version), ANNOTATION_MODEL_SHA256: model.sha256,
                        **({ANNOTATION_METADATA_SHA256: model.metadata_sha256} if model.metadata_sha256 else {}),
                        ANNOTATION_MODEL_URI: model.uri, "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(SERVER_PORT), "prometheus.io/path": "/metrics"},
    }
    pod_spec: dict[str, Any] = {
        "securityContext": pods.pod_security_context(settings),
        "automountServiceAccountToken": False,
        # No docker-link variables for every Service of the namespace (a Service named like an env setting
        # would override it, e.g. MODELLOOP_*_PORT).
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 30,
        "containers": [container],
        "volumes": volumes,
    }
    pods.apply_overrides(pod_spec, pod_meta, container, spec.pod_template)
    deployment_spec: dict[str, Any] = {
        "selector": {"matchLabels": match_labels},
        "strategy": {"type": "RollingUpdate",
                     "rollingUpdate": {"maxUnavailable": 0, "maxSurge": spec.rollout.max_surge}},
        "progressDeadlineSeconds": spec.rollout.progress_deadline_seconds,
        "revisionHistoryLimit": 5,
        "template": {"metadata": pod_meta, "spec": pod_spec},
    }
    if replicas is not None:  # None with an HPA: replicas belong to the HPA, we do not manage the field
        deployment_spec["replicas"] = replicas
    meta = _meta(owner, name, labels)
    meta["annotations"] = {ANNOTATION_MODEL_VERSION: str(model.version)}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": deployment_spec}


def _server_container(model_name: str, spec: ModelDeploymentSpec, model: ServedModel, extra_args: list[str],
                      mounts: list[dict[str, Any]], settings: Settings) -> dict[str, Any]:
    """The model server container: its arguments and environment (the pinned digests, the runtime, storage and
    feedback settings), ports, probes, resources and security context."""
    s = spec.server
    return {
        "name": "server",
        "image": settings.runtime_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["modelloop-serve"],
        "args": ["--model-uri", model.uri, "--model-name", model_name, "--port", str(SERVER_PORT),
                 "--sketch-port", str(SKETCH_PORT),
                 "--max-batch-size", str(s.max_batch_size), "--max-batch-wait-ms", f"{s.max_batch_wait_ms:g}",
                 "--max-body-bytes", str(s.max_body_bytes), *extra_args],
        "env": [*pods.base_env(settings), *pinned_digests_env(model),
                {"name": "MODELLOOP_RUNTIME", "value": s.runtime},
                {"name": "MODELLOOP_INFERENCE_TIMEOUT_SECONDS", "value": f"{parse_duration(s.inference_timeout):g}"},
                *pods.storage_env(spec.storage),
                *feedback_env(spec)],
        "ports": [{"name": "http", "containerPort": SERVER_PORT, "protocol": "TCP"},
                  {"name": "sketch", "containerPort": SKETCH_PORT, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": "http"},
                           "periodSeconds": 2, "failureThreshold": 2, "timeoutSeconds": 2},
        # Loading and warming the model may be slow on a busy node: liveness counts only once the server answered.
        "startupProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"},
                         "periodSeconds": 2, "failureThreshold": 150, "timeoutSeconds": 2},
        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"},
                          "periodSeconds": 10, "failureThreshold": 3, "timeoutSeconds": 3},
        "resources": pods.resources(spec.resources, pods.DEFAULT_SERVER_RESOURCES),
        "securityContext": pods.container_security_context(),
        "volumeMounts": mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def feedback_env(spec: ModelDeploymentSpec) -> list[dict[str, Any]]:
    """The server's outcome settings (spec.feedback); none when feedback is off."""
    f = spec.feedback
    if f is None:
        return []
    return [{"name": "MODELLOOP_FEEDBACK_URI", "value": f.uri},
            {"name": "MODELLOOP_FEEDBACK_MAX_DELAY_SECONDS", "value": f"{parse_duration(f.max_delay):g}"},
            {"name": "MODELLOOP_FEEDBACK_RETENTION_SECONDS", "value": f"{parse_duration(f.retention):g}"},
            {"name": "MODELLOOP_FEEDBACK_LOG_INPUTS", "value": "true" if f.log_inputs else "false"},
            {"name": "MODELLOOP_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]


def pinned_digests_env(model: ServedModel) -> list[dict[str, str]]:
    """The digests the server checks before it parses a byte of the version (docs/security.md)."""
    env = [{"name": "MODELLOOP_MODEL_SHA256", "value": model.sha256}]
    if model.metadata_sha256:
        env.append({"name": "MODELLOOP_METADATA_SHA256", "value": model.metadata_sha256})
    return env


def render_service(owner: dict, challenger: bool = False) -> dict[str, Any]:
    """The Service of the champion's pods (and a canary's challenger pods), or the challenger's own."""
    name = owner["metadata"]["name"]
    chosen = challenger_selector(name) if challenger else selector(name)
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": _meta(owner, challenger_name(name) if challenger else name,
                              {**pods.common_labels("server", name), **chosen}),
            "spec": {"type": "ClusterIP", "selector": chosen,
                     "ports": [{"name": "http", "port": SERVER_PORT, "targetPort": "http", "protocol": "TCP"}]}}


def render_network_policy(owner: dict, settings: Settings = SETTINGS, challenger: bool = False) -> dict[str, Any]:
    """Ingress of the server pods (the champion's, or the challenger's): the inference port (V2, V1, health,
    /metrics) from anywhere, as without a policy; the sketch port (live feature distributions of the traffic)
    from the operator's pods only. The Service does not expose the sketch port at all."""
    name = owner["metadata"]["name"]
    pod_selector = challenger_selector(name) if challenger else selector(name)
    operator = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": settings.operator_namespace}},
                "podSelector": {"matchLabels": dict(settings.operator_pod_labels)}}
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": _meta(owner, challenger_name(name) if challenger else name, pods.common_labels("server", name)),
            "spec": {"podSelector": {"matchLabels": pod_selector}, "policyTypes": ["Ingress"],
                     "ingress": [{"ports": [{"protocol": "TCP", "port": SERVER_PORT}]},
                                 {"from": [operator], "ports": [{"protocol": "TCP", "port": SKETCH_PORT}]}]}}


def render_hpa(owner: dict, spec: ModelDeploymentSpec) -> dict[str, Any] | None:
    if not spec.autoscaling:
        return None
    name, a = owner["metadata"]["name"], spec.autoscaling
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": _meta(owner, name, pods.common_labels("server", name)),
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                     "minReplicas": a.min_replicas, "maxReplicas": a.max_replicas,
                     "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                         "type": "Utilization", "averageUtilization": a.target_cpu_utilization_percentage}}}]}}


def render_pdb(owner: dict, spec: ModelDeploymentSpec) -> dict[str, Any] | None:
    most = spec.autoscaling.max_replicas if spec.autoscaling else desired_replicas(spec)
    if most <= 1:
        return None
    name = owner["metadata"]["name"]
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": _meta(owner, name, pods.common_labels("server", name)),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(name)}}}
