"""Types shared by the three resources: the base model, conditions, references, pod overrides.

Every field carries a description: the CRDs are generated from these models, so the description is
what `kubectl explain` shows.
"""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "modelloop.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "modelloop"

URI_PATTERN = r"^(s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?|file:///.*|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/.*)?)$"
URI_DESCRIPTION = ("`s3://bucket/key`, `file:///absolute/path` or `pvc://claim/path` (the claim is mounted in "
                   "the pod; the path is inside it).")
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"


def cel(rule: str, message: str, field_path: str | None = None, reason: str | None = None) -> dict[str, str]:
    """One `x-kubernetes-validations` entry. `field_path` makes the API server name the field."""
    out = {"rule": rule, "message": message}
    if field_path:
        out["fieldPath"] = field_path
    if reason:
        out["reason"] = reason
    return out


def extra(**kw: Any) -> dict[str, Any]:
    """Schema extensions attached to a model or field (x-kubernetes-*), passed to the generator."""
    return {k.replace("_", "-"): v for k, v in kw.items()}


class ApiModel(BaseModel):
    """Base of all resource models: camelCase on the wire, unknown fields refused (as the CRD does)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    def wire(self) -> dict[str, Any]:
        """The object as it appears in the Kubernetes API (aliases, no unset optionals)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


Quantity = Annotated[
    int | str,
    Field(json_schema_extra=extra(x_kubernetes_int_or_string=True)),
]


class Condition(ApiModel):
    """A metav1.Condition: the state of one aspect of the resource."""

    type: str = Field(description="Type of condition in CamelCase, e.g. Ready.", max_length=316)
    status: Literal["True", "False", "Unknown"] = Field(description="Status of the condition: True, False or Unknown.")
    reason: str = Field(description="Machine-readable reason for the last transition, in CamelCase.", max_length=1024)
    message: str = Field(default="", description="Human-readable details about the last transition.", max_length=32768)
    last_transition_time: datetime = Field(description="When the condition last changed status.")
    observed_generation: int | None = Field(default=None, ge=0,
                                            description="The .metadata.generation the condition was set from.")


CONDITIONS_EXTRA = extra(x_kubernetes_list_type="map", x_kubernetes_list_map_keys=["type"])


def conditions_field() -> Any:
    return Field(default=None, description=(
        "Current state as metav1.Conditions, one per type (see docs/api.md for types and reasons). "
        "Ready is present from the first reconcile; Reconciling and Stalled are true only when abnormal."),
        json_schema_extra=CONDITIONS_EXTRA)


class LocalObjectReference(ApiModel):
    """A reference to an object of a known kind in the same namespace."""

    name: str = Field(description="Name of the referenced object in the same namespace.", min_length=1,
                      max_length=253)


class StorageSpec(ApiModel):
    """How to reach the artifact or dataset store."""

    secret_ref: LocalObjectReference | None = Field(default=None, description=(
        "Secret with the S3 credentials, exposed to the pods as environment variables: AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY, and optionally AWS_ENDPOINT_URL and AWS_REGION. Its values never appear in "
        "status, events or logs."))


class ResourceRequirements(ApiModel):
    """Compute resources of the container, as in a pod spec."""

    requests: dict[str, Quantity] | None = Field(default=None, description="Minimum resources, e.g. {cpu: 500m, memory: 1Gi}.")
    limits: dict[str, Quantity] | None = Field(default=None, description="Maximum resources, e.g. {cpu: '2', memory: 4Gi}.")


class Toleration(ApiModel):
    """A pod toleration, as in a pod spec."""

    key: str | None = Field(default=None, description="Taint key the toleration applies to; empty matches all keys.")
    operator: Literal["Exists", "Equal"] | None = Field(default=None, description="Exists or Equal (default Equal).")
    value: str | None = Field(default=None, description="Taint value the toleration matches (with Equal).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all effects.")
    toleration_seconds: int | None = Field(default=None, description="How long a NoExecute taint is tolerated.")


class EnvVar(ApiModel):
    """An environment variable for the container, as in a pod spec."""

    name: str = Field(description="Variable name.", min_length=1)
    value: str | None = Field(default=None, description="Literal value.")
    value_from: dict[str, Any] | None = Field(default=None, description=(
        "Source of the value (secretKeyRef, configMapKeyRef, fieldRef, resourceFieldRef), as in a pod spec."),
        json_schema_extra=extra(x_kubernetes_preserve_unknown_fields=True))


class PodOverrides(ApiModel):
    """Overrides applied to the pods modelloop creates."""

    image: str | None = Field(default=None, description=(
        "Runtime image to run instead of the operator's default (it must contain modelloop's entrypoints)."))
    labels: dict[str, str] | None = Field(default=None, description="Extra labels on the pods.")
    annotations: dict[str, str] | None = Field(default=None, description="Extra annotations on the pods.")
    node_selector: dict[str, str] | None = Field(default=None, description="Node labels the pods must run on.")
    tolerations: list[Toleration] | None = Field(default=None, description="Tolerations of the pods.")
    service_account_name: str | None = Field(default=None, description="Service account the pods run as.")
    env: list[EnvVar] | None = Field(default=None, description="Extra environment variables of the container.")
    priority_class_name: str | None = Field(default=None, description="Priority class of the pods.")


class MetricValue(ApiModel):
    """A named metric and its value."""

    name: str = Field(description="Metric name, e.g. accuracy or rmse.")
    value: float = Field(description="Metric value on the validation split.")
