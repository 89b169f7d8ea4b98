"""ModelDeployment: a model version served behind a stable Service, scaled, promoted and rolled back."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from .common import (
    DURATION_PATTERN, URI_DESCRIPTION, ApiModel, Condition, MetricValue, ObjectName, PodOverrides,
    ResourceRequirements, StorageSpec, StorageUri, cel, conditions_field, duration_rule, extra,
)

# The model server's ports: inference, health and /metrics on SERVER_PORT (open to the cluster);
# live sketches on SKETCH_PORT, which the rendered NetworkPolicy opens to the operator only.
SERVER_PORT = 8080
SKETCH_PORT = 8081


class ModelSource(ApiModel):
    """Which model to serve: follow a ModelTraining, or a fixed artifact."""

    from_training: ObjectName | None = Field(default=None, description=(
        "Name of a ModelTraining in the same namespace whose versions this deployment serves."))
    version: str | None = Field(default=None, pattern=r"^(latest|[1-9][0-9]*)$", description=(
        "With fromTraining: `latest` (default) follows each new good version subject to spec.promotion; "
        "a number pins that version."))
    uri: StorageUri | None = Field(default=None, description=(
        f"A fixed artifact version to serve (the v<N> directory that holds metadata.json): {URI_DESCRIPTION}"))


ModelSource.model_config["json_schema_extra"] = extra(x_kubernetes_validations=[
    cel("has(self.fromTraining) != has(self.uri)",
        "spec.model must set exactly one of fromTraining and uri"),
    cel("!has(self.version) || has(self.fromTraining)",
        "spec.model.version can only be used with spec.model.fromTraining", ".version"),
    cel("!has(self.uri) || self.uri.matches('/v[1-9][0-9]*/?$')",
        "spec.model.uri must name a version: <output>/v<N>, e.g. s3://bucket/models/churn/v3", ".uri"),
])


class PromotionSpec(ApiModel):
    """When a new version may replace the serving one."""

    policy: Literal["auto", "manual"] = Field(default="auto", description=(
        "auto: a new version is rolled out when it passes minMetric and maxRegression. manual: the serving "
        "version changes only when approvedVersion is set to the candidate."))
    min_metric: float | None = Field(default=None, description=(
        "A version whose primary metric is worse than this is not promoted (for rmse, mae, log_loss: higher "
        "is worse)."))
    max_regression: float | None = Field(default=None, ge=0, description=(
        "Largest allowed worsening of the primary metric against the serving version, in metric units."))
    approved_version: int | None = Field(default=None, ge=1, description=(
        "With policy manual: the version a human approved for rollout."))


class AutoscalingSpec(ApiModel):
    """Horizontal autoscaling of the server pods (an autoscaling/v2 HPA)."""

    min_replicas: int = Field(default=1, ge=1, le=1000, description="Fewest replicas.")
    max_replicas: int = Field(ge=1, le=1000, description="Most replicas.")
    target_cpu_utilization_percentage: int = Field(default=70, ge=1, le=100, description=(
        "Average CPU utilisation, in percent of the CPU request, the HPA aims for."))


AutoscalingSpec.model_config["json_schema_extra"] = extra(x_kubernetes_validations=[
    cel("self.minReplicas <= self.maxReplicas",
        "spec.autoscaling.minReplicas must be less than or equal to spec.autoscaling.maxReplicas", ".minReplicas"),
])


class ServerSpec(ApiModel):
    """Options of the model server."""

    max_batch_size: int = Field(default=32, ge=1, le=4096, description=(
        "Most rows merged into one prediction call by adaptive batching."))
    max_batch_wait_ms: float = Field(default=2, ge=0, le=1000, description=(
        "Longest a request waits for others to join its batch, in milliseconds."))
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024, le=1024 ** 3, description=(
        "Largest accepted request body; bigger requests get 413."))
    runtime: Literal["auto", "onnx", "sklearn"] = Field(default="auto", description=(
        "What predicts: auto serves the version's model.onnx with onnxruntime when it has one (written by the "
        "trainer when the ONNX graph matches scikit-learn) and model.skops with scikit-learn otherwise; onnx "
        "requires model.onnx (a version without one never becomes ready); sklearn never loads model.onnx."))
    inference_timeout: str = Field(default="10s", pattern=DURATION_PATTERN, max_length=32, description=(
        "Longest one prediction call may take, e.g. 10s (default): past it, its requests get 504 and an onnxruntime "
        "run is cancelled; a scikit-learn call cannot be, so the server's liveness fails until it returns and the "
        "kubelet restarts the container."),
        json_schema_extra=extra(x_kubernetes_validations=[duration_rule("spec.server.inferenceTimeout", "100ms",
                                                                        "1h")]))


class RolloutSpec(ApiModel):
    """How a new version replaces the serving one."""

    progress_deadline_seconds: int = Field(default=300, ge=10, le=3600, description=(
        "A rollout not Available within this time is rolled back to the last Available version."))
    max_surge: int | str = Field(default="25%", description=(
        "Extra pods during a rollout: a number or a percentage, at least 1 (pods are never taken down first)."),
        json_schema_extra=extra(x_kubernetes_int_or_string=True, x_kubernetes_validations=[
            cel("type(self) == int ? self >= 1 : self.matches('^[1-9][0-9]{0,3}%$')",
                "spec.rollout.maxSurge must be a number >= 1 or a percentage such as 25% (maxUnavailable is 0)"),
        ]))


class FeedbackSpec(ApiModel):
    """Outcomes: every prediction is recorded (id, version, time, prediction, confidence) so that ground truth
    sent later to /v2/models/{name}/feedback can be joined with it (docs/outcomes.md)."""

    uri: StorageUri = Field(description=(
        "Where the servers write prediction and label records (predictions/ and labels/ below it), with the "
        f"deployment's storage credentials, which must allow writing there: {URI_DESCRIPTION}"))
    max_delay: str = Field(default="168h", pattern=DURATION_PATTERN, max_length=32, description=(
        "How long after a prediction its label is still accepted, e.g. 24h (default 168h, 7 days)."),
        json_schema_extra=extra(x_kubernetes_validations=[duration_rule("spec.feedback.maxDelay", "1m", "8784h")]))
    retention: str = Field(default="720h", pattern=DURATION_PATTERN, max_length=32, description=(
        "Records older than this are deleted, by whole UTC days (default 720h, 30 days); at least maxDelay."),
        json_schema_extra=extra(x_kubernetes_validations=[duration_rule("spec.feedback.retention", "1h", "87840h")]))
    log_inputs: bool = Field(default=False, description=(
        "Also record each prediction's input features. Off by default: inputs may be personal data "
        "(docs/security.md)."))


FeedbackSpec.model_config["json_schema_extra"] = extra(x_kubernetes_validations=[
    cel("duration(self.retention) >= duration(self.maxDelay)",
        "spec.feedback.retention must be at least spec.feedback.maxDelay (a label joins a kept prediction)",
        ".retention"),
])


class ModelDeploymentSpec(ApiModel):
    """Desired state of a ModelDeployment."""

    model: ModelSource = Field(description="The model to serve.")
    promotion: PromotionSpec = Field(default_factory=PromotionSpec, description="When new versions go live.")
    replicas: int | None = Field(default=None, ge=0, le=1000, description=(
        "Number of server pods (default 1) when autoscaling is not set."))
    autoscaling: AutoscalingSpec | None = Field(default=None, description="Autoscaling; excludes replicas.")
    resources: ResourceRequirements | None = Field(default=None, description=(
        "Resources of the server container; default requests cpu 100m, memory 256Mi and a memory limit of 1Gi."))
    pod_template: PodOverrides | None = Field(default=None, description="Overrides of the server pods.")
    server: ServerSpec = Field(default_factory=ServerSpec, description="Model server options.")
    rollout: RolloutSpec = Field(default_factory=RolloutSpec, description="Rollout settings.")
    storage: StorageSpec | None = Field(default=None, description="Credentials of the artifact store.")
    feedback: FeedbackSpec | None = Field(default=None, description=(
        "Record predictions for ground truth fed back by prediction id; unset, nothing is recorded."))


ModelDeploymentSpec.model_config["json_schema_extra"] = extra(x_kubernetes_validations=[
    cel("!(has(self.replicas) && has(self.autoscaling))",
        "spec.replicas and spec.autoscaling are mutually exclusive", ".replicas"),
])


class ModelDeploymentStatus(ApiModel):
    """Observed state of a ModelDeployment."""

    observed_generation: int | None = Field(default=None, description="The .metadata.generation last reconciled.")
    conditions: list[Condition] | None = conditions_field()
    phase: Literal["Pending", "Progressing", "Available", "Degraded", "Failed"] | None = Field(
        default=None, description="Summary for humans.")
    model_version: int | None = Field(default=None, description="Version being served (or rolled out).")
    model_uri: str | None = Field(default=None, description="Artifact URI being served.")
    model_sha256: str | None = Field(default=None, description="sha256 of the served model file.")
    model_metadata_sha256: str | None = Field(default=None, description=(
        "sha256 of the served version's metadata.json; the servers refuse a version whose files differ."))
    metric: MetricValue | None = Field(default=None, description="Primary metric of the served version.")
    previous_version: int | None = Field(default=None, description="Version served before the current one.")
    last_available_version: int | None = Field(default=None, description=(
        "Newest version that became Available; rollbacks return to it."))
    last_available_uri: str | None = Field(default=None, description="Artifact URI of lastAvailableVersion.")
    failed_versions: list[int] | None = Field(default=None, description=(
        "Versions whose rollout missed its progress deadline; they are not promoted again unless pinned."))
    rollback_generation: int | None = Field(default=None, description=(
        "The .metadata.generation at the last rollback; a pinned version that failed is retried only "
        "after the spec changes again."))
    candidate_version: int | None = Field(default=None, description=(
        "Newest version of the training not (yet) promoted, when one is held back."))
    promotion_message: str | None = Field(default=None, description="Why the candidate was not promoted.")
    url: str | None = Field(default=None, description="In-cluster V2 inference endpoint.")
    replicas: int | None = Field(default=None, description="Pods of the server Deployment.")
    ready_replicas: int | None = Field(default=None, description="Ready pods of the server Deployment.")
    selector: str | None = Field(default=None, description="Label selector of the pods (scale subresource).")


class ModelDeployment(ApiModel):
    """Serves a model version with the Open Inference Protocol behind a Service; promotes and rolls back."""

    spec: ModelDeploymentSpec = Field(description="Desired state.")
    status: ModelDeploymentStatus | None = Field(default=None, description="Observed state, written by the operator.")


ModelDeployment.model_config["json_schema_extra"] = extra(x_kubernetes_validations=[
    cel("self.metadata.name.size() <= 52",
        "metadata.name must be at most 52 characters (it names the Service and Deployment)"),
    cel("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
        "metadata.name must be a DNS-1035 label: lower-case letters, digits and '-', starting with a letter "
        "(it names the Service)"),
])

KIND = {
    "kind": "ModelDeployment", "plural": "modeldeployments", "singular": "modeldeployment", "short_names": ["mdep"],
    "model": ModelDeployment,
    "printer_columns": [
        {"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Version", "type": "integer", "jsonPath": ".status.modelVersion"},
        {"name": "Replicas", "type": "integer", "jsonPath": ".status.readyReplicas"},
        {"name": "Metric", "type": "string", "jsonPath": ".status.metric.display"},
        {"name": "URL", "type": "string", "jsonPath": ".status.url", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
    "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
              "labelSelectorPath": ".status.selector"},
}
