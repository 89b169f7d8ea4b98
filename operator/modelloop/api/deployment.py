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


class ShadowSpec(ApiModel):
    """strategy shadow: the champion copies a sample of its requests to the challenger, whose answers go nowhere."""

    fraction: float = Field(default=1.0, gt=0, le=1, description=(
        "Share of requests copied, sampled by a hash of the request id (a retried request samples the same way). "
        "Copies never delay a user's request; they are dropped and counted when the challenger is slow or gone."))


class CanarySpec(ApiModel):
    """strategy canary: the challenger serves a growing share of users, one analysed step at a time."""

    steps: list[int] = Field(default_factory=lambda: [25, 50], min_length=1, max_length=10, description=(
        "The challenger's traffic weights in percent, in increasing order; each step is analysed before the next, "
        "and after the last the challenger takes everything. Without spec.rollout.gateway the weight is carried "
        "by pod counts behind the one Service (each version keeps at least one pod: with 4 replicas the steps "
        "are 25% apart); status.rollout.trafficShare shows the share really given."),
        json_schema_extra=extra(x_kubernetes_validations=[
            cel("self.all(w, w >= 1 && w <= 99)", "spec.rollout.canary.steps must be percentages from 1 to 99"),
            cel("self.isSorted() && self.all(w, self.indexOf(w) == self.lastIndexOf(w))",
                "spec.rollout.canary.steps must increase"),
        ]))


class ParentRef(ApiModel):
    """A Gateway API parent (a Gateway, or a listener of one) the rendered HTTPRoute attaches to."""

    name: ObjectName = Field(description="Name of the Gateway.")
    namespace: ObjectName | None = Field(default=None, description="Its namespace (default: this resource's).")
    section_name: ObjectName | None = Field(default=None, description="A listener of the Gateway, by name.")


class GatewaySpec(ApiModel):
    """Canary weights through a Gateway API HTTPRoute instead of pod counts."""

    parent_ref: ParentRef = Field(description=(
        "The Gateway the operator's HTTPRoute (named like this resource) attaches to; its backendRefs carry the "
        "champion's and the challenger's Services with the step's weights."))


class AnalysisSpec(ApiModel):
    """When a challenger is judged against the champion on live traffic, and the thresholds of each gate
    (docs/challenger.md). A gate fails on evidence of harm beyond its tolerance, decided once per window."""

    window: str = Field(default="10m", pattern=DURATION_PATTERN, max_length=32, description=(
        "Shortest analysis, counted from the challenger's pods being Available (default 10m)."),
        json_schema_extra=extra(x_kubernetes_validations=[duration_rule("spec.rollout.analysis.window", "10s",
                                                                        "168h")]))
    min_requests: int = Field(default=500, ge=1, le=100_000_000, description=(
        "Requests the challenger must have answered before anything is decided."))
    min_labels: int = Field(default=200, ge=1, le=100_000_000, description=(
        "Labelled rows both versions predicted (classifiers: rows where they disagree) before the paired test "
        "of live performance is made."))
    require_labels: bool = Field(default=False, description=(
        "Wait for minLabels before deciding; otherwise the performance gate is skipped (and says so) when "
        "labels are fewer."))
    alpha: float = Field(default=0.05, gt=0, lt=0.5, description="One-sided level of each statistical test.")
    max_error_rate_increase: float = Field(default=0.01, ge=0, le=1, description=(
        "Tolerated increase of the error rate (5xx answers) over the champion's."))
    max_latency_ratio: float = Field(default=1.5, ge=1, le=100, description=(
        "Largest challenger p99 latency over the champion's."))
    min_agreement: float = Field(default=0.8, ge=0, le=1, description=(
        "Classifiers: smallest share of rows given the same label by both versions."))
    max_output_distance: float = Field(default=0.25, ge=0, le=100, description=(
        "Regressors: largest Wasserstein distance between the two versions' outputs, in champion standard "
        "deviations."))
    watch_for: str = Field(default="1h", pattern=DURATION_PATTERN, max_length=32, description=(
        "After a promotion, how long the new champion is watched against what the previous one showed; it is "
        "rolled back when its error rate is significantly higher (default 1h)."),
        json_schema_extra=extra(x_kubernetes_validations=[duration_rule("spec.rollout.analysis.watchFor", "0s",
                                                                        "168h")]))


class RolloutSpec(ApiModel):
    """How a new version replaces the serving one."""

    strategy: Literal["direct", "shadow", "canary"] = Field(default="direct", description=(
        "direct: a rolling update to the new version once it passes spec.promotion. shadow: the new version "
        "first runs beside the serving one (the challenger) and is sent copies of live requests; canary: it "
        "serves a growing share of users. In both, the operator compares it with the serving version on live "
        "traffic (spec.rollout.analysis) and promotes or rejects it."))
    shadow: ShadowSpec = Field(default_factory=ShadowSpec, description="Settings of strategy shadow.")
    canary: CanarySpec = Field(default_factory=CanarySpec, description="Settings of strategy canary.")
    analysis: AnalysisSpec = Field(default_factory=AnalysisSpec, description=(
        "The live comparison of challenger and champion (strategies shadow and canary)."))
    gateway: GatewaySpec | None = Field(default=None, description=(
        "strategy canary: move the weight with a Gateway API HTTPRoute on this Gateway instead of pod counts."))

    progress_deadline_seconds: int = Field(default=300, ge=10, le=3600, description=(
        "A rollout not Available within this time is rolled back to the last Available version."))
    max_surge: int | str = Field(default="25%", description=(
        "Extra pods during a rollout: a number or a percentage, at least 1 (pods are never taken down first)."),
        json_schema_extra=extra(x_kubernetes_int_or_string=True, x_kubernetes_validations=[
            cel("type(self) == int ? self >= 1 : self.matches('^[1-9][0-9]{0,3}%$')",
                "spec.rollout.maxSurge must be a number >= 1 or a percentage such as 25% (maxUnavailable is 0)"),
        ]))


RolloutSpec.model_config["json_schema_extra"] = extra(x_kubernetes_validations=[
    cel("!has(self.gateway) || self.strategy == 'canary'",
        "spec.rollout.gateway is used by strategy canary only", ".gateway"),
])


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


class GateStatus(ApiModel):
    """One gate of the analysis: its current value against its threshold."""

    name: Literal["errorRate", "latency", "agreement", "performance"] = Field(description="The gate.")
    verdict: Literal["pass", "fail", "wait", "skip"] = Field(description=(
        "pass or fail once decided (and as it stands before that); wait: not enough data; skip: not tested."))
    value: float | None = Field(default=None, description=(
        "errorRate: challenger minus champion error rate; latency: p99 ratio; agreement: share of identical "
        "labels or output distance; performance: p-value of the paired test."))
    threshold: float | None = Field(default=None, description="The spec.rollout.analysis threshold it is held to.")
    message: str | None = Field(default=None, max_length=512, description="The numbers behind the verdict.")


class RejectedVersion(ApiModel):
    """A challenger the analysis (or a person) rejected: it is not promoted again by itself."""

    version: int = Field(description="The rejected version.")
    time: str | None = Field(default=None, description="When (RFC 3339).")
    message: str | None = Field(default=None, max_length=1024, description="Why, with the gates' numbers.")


class RolloutStatus(ApiModel):
    """The live comparison of a challenger with the champion, and the watch after a promotion."""

    strategy: Literal["direct", "shadow", "canary"] | None = Field(default=None, description="spec.rollout.strategy.")
    phase: Literal["Stable", "Shadowing", "Canary", "Promoting", "Watching"] | None = Field(default=None, description=(
        "Stable: one version serves; Shadowing / Canary: a challenger is analysed; Promoting: the champion is "
        "rolling out the challenger's version; Watching: a new champion is watched against the previous one."))
    champion: int | None = Field(default=None, description="The version serving users.")
    challenger: int | None = Field(default=None, description="The version being analysed.")
    challenger_uri: str | None = Field(default=None, description="Artifact URI of the challenger.")
    challenger_sha256: str | None = Field(default=None, description="sha256 of the challenger's model file.")
    challenger_metadata_sha256: str | None = Field(default=None, description="sha256 of its metadata.json.")
    challenger_metric: MetricValue | None = Field(default=None, description="Hold-out metric of the challenger.")
    step: int | None = Field(default=None, description="Canary: index into spec.rollout.canary.steps.")
    traffic_share: float | None = Field(default=None, description=(
        "Share of user traffic the challenger serves (0 while shadowing; by replicas or route weights in canary)."))
    started_at: str | None = Field(default=None, description=(
        "When the analysis window (or the watch) started: the challenger's pods Available, or the promotion."))
    gates: list[GateStatus] | None = Field(default=None, description="The gates as of the last check.")
    message: str | None = Field(default=None, max_length=2048, description="What the analysis is doing or decided.")
    previous: int | None = Field(default=None, description="Watching: the version the new champion replaced.")
    previous_uri: str | None = Field(default=None, description="Watching: its artifact URI (a rollback returns to it).")
    previous_requests: int | None = Field(default=None, description=(
        "Watching: requests the previous champion answered during the analysis."))
    previous_errors: int | None = Field(default=None, description="Watching: and its errors among them.")
    rejected: list[RejectedVersion] | None = Field(default=None, description=(
        "Challengers rejected on live traffic, newest last (at most 20)."))


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
    rollout: RolloutStatus | None = Field(default=None, description=(
        "Strategies shadow and canary: champion, challenger, phase, traffic share and the analysis gates."))
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
        {"name": "Rollout", "type": "string", "jsonPath": ".status.rollout.phase"},
        {"name": "Challenger", "type": "integer", "jsonPath": ".status.rollout.challenger"},
        {"name": "Share", "type": "number", "jsonPath": ".status.rollout.trafficShare", "priority": 1},
        {"name": "URL", "type": "string", "jsonPath": ".status.url", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
    "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
              "labelSelectorPath": ".status.selector"},
}
