"""Types shared by the three resources: the base model, conditions, references, pod overrides.

Every field carries a description: the CRDs are generated from these models, so the description is
what `kubectl explain` shows.
"""
from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.alias_generators import to_camel

from ..names import API_VERSION, CATEGORY, GROUP, VERSION  # noqa: F401 - the API's names, re-exported

# Storage URIs: the scheme, a valid bucket or claim name, and a path without query, fragment or control
# characters. Path segments are checked separately (STORAGE_URI_RULE) so that the message says why.
URI_PATTERN = (r"^(s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/[^?#\x00-\x1f\x7f]*)?"
               r"|file:///[^?#\x00-\x1f\x7f]*"
               r"|pvc://[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(/[^?#\x00-\x1f\x7f]*)?)$")
URI_DESCRIPTION = ("`s3://bucket/key`, `file:///absolute/path` or `pvc://claim/path` (the claim is mounted in "
                   "the pod; the path is inside it). Empty, `.` and `..` path segments are refused.")
URI_MAX_LENGTH = 2048
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
# DNS-1123 subdomain: names of Secrets, ServiceAccounts, PriorityClasses and of modelloop's own kinds.
OBJECT_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# A Kubernetes quantity without a sign (requests and limits are never negative), as kubebuilder's.
QUANTITY_PATTERN = (r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
                    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$")
# Label keys (an optional DNS prefix, then a name of at most 63 characters) and values; annotation keys.
QUALIFIED_NAME_RE = (r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                     r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
LABEL_VALUE_RE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
# Environment variables with this prefix are the operator's (docs/security.md, "Pod templates").
RESERVED_ENV_PREFIX = "MODELLOOP_"
IMAGE_PATTERN = (r"^[a-z0-9]([a-z0-9._:/-]*[a-z0-9])?(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
                 r"(@sha256:[a-f0-9]{64})?$")

# The keys of a storage Secret that reach pods (as secretKeyRefs) and the operator's own store clients.
REQUIRED_CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
OPTIONAL_CREDENTIAL_KEYS = ("AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION",
                            "AWS_DEFAULT_REGION")
CREDENTIAL_KEYS = REQUIRED_CREDENTIAL_KEYS + OPTIONAL_CREDENTIAL_KEYS


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


def uri_path_problem(uri: str) -> str | None:
    """Why the path of a storage URI is refused (an empty, `.` or `..` segment), or None. The CRD's
    STORAGE_URI_RULE says the same in CEL; both refuse before anything reads the URI."""
    rest = uri.partition("://")[2]
    if "//" in rest:
        return "has an empty path segment ('//')"
    if re.search(r"(^|/)\.\.?(/|$)", rest):
        return "has a '.' or '..' path segment"
    return None


def _checked_uri(uri: str) -> str:
    problem = uri_path_problem(uri)
    if problem:
        raise ValueError(f"uri '{uri}' {problem}; storage URIs name their objects without relative segments")
    return uri


_REST = "self.substring(self.indexOf('://') + 3)"
STORAGE_URI_RULE = cel(f"!{_REST}.contains('//') && !{_REST}.matches('(^|/)[.][.]?(/|$)')",
                       "must not contain empty, '.' or '..' path segments")

StorageUri = Annotated[str, Field(pattern=URI_PATTERN, max_length=URI_MAX_LENGTH,
                                  json_schema_extra=extra(x_kubernetes_validations=[STORAGE_URI_RULE])),
                       AfterValidator(_checked_uri)]


def check_storage_uri(uri: str, field: str) -> str:
    """A URI that did not come through the API server's schema (an annotation): the same checks."""
    try:
        return TypeAdapter(StorageUri).validate_python(uri)
    except ValidationError as e:
        detail = e.errors()[0]
        msg = ("is not an s3://bucket/key, file:///absolute/path or pvc://claim/path URI"
               if detail["type"] == "string_pattern_mismatch" else detail["msg"].removeprefix("Value error, "))
        raise ValueError(f"{field} '{uri}' {msg}") from None


ObjectName = Annotated[str, Field(min_length=1, max_length=253, pattern=OBJECT_NAME_PATTERN)]


def duration_rule(field: str, minimum: str, maximum: str) -> dict[str, str]:
    """CEL bounds of a Go-style duration string (`self` is the string)."""
    return cel(f"duration(self) >= duration('{minimum}') && duration(self) <= duration('{maximum}')",
               f"{field} must be between {minimum} and {maximum}")


def key_rules(field: str) -> list[dict[str, str]]:
    """CEL rule of the keys of a map of labels or annotations (map keys have no schema of their own)."""
    return [cel(f"self.all(k, k.size() <= 317 && k.matches('{QUALIFIED_NAME_RE}'))",
                f"{field} keys must be qualified names (an optional DNS prefix and '/', then at most 63 "
                f"alphanumerics, '-', '_' or '.')")]


LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE_RE)]
AnnotationValue = Annotated[str, Field(max_length=16384)]


class ApiModel(BaseModel):
    """Base of all resource models: camelCase on the wire, unknown fields refused (as the CRD does)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    def wire(self) -> dict[str, Any]:
        """The object as it appears in the Kubernetes API (aliases, no unset optionals)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


Quantity = Annotated[
    Annotated[int, Field(ge=0)] | Annotated[str, Field(pattern=QUANTITY_PATTERN, max_length=64)],
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

    name: ObjectName = Field(description="Name of the referenced object in the same namespace (a DNS-1123 subdomain).")


class StorageSpec(ApiModel):
    """How to reach the artifact or dataset store."""

    secret_ref: LocalObjectReference | None = Field(default=None, description=(
        "Secret with the S3 credentials. Pods get its keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (required), "
        "and AWS_SESSION_TOKEN, AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_S3, AWS_REGION, AWS_DEFAULT_REGION (optional), "
        "each as a secretKeyRef; other keys of the Secret are not exposed. Without a secretRef, S3 is read "
        "anonymously. Its values never appear in status, events or logs."))


RESOURCE_NAME_RE = (r"^(cpu|memory|ephemeral-storage|hugepages-[0-9]+[KMG]i|"
                    r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)$")
_RESOURCE_NAMES = cel(f"self.all(k, k.size() <= 317 && k.matches('{RESOURCE_NAME_RE}'))",
                      "resource names must be cpu, memory, ephemeral-storage, hugepages-<size> or a "
                      "domain-prefixed extended resource such as nvidia.com/gpu")


class ResourceRequirements(ApiModel):
    """Compute resources of the container, as in a pod spec."""

    requests: dict[str, Quantity] | None = Field(default=None, max_length=16, description=(
        "Minimum resources, e.g. {cpu: 500m, memory: 1Gi}; values are Kubernetes quantities."),
        json_schema_extra=extra(x_kubernetes_validations=[_RESOURCE_NAMES]))
    limits: dict[str, Quantity] | None = Field(default=None, max_length=16, description=(
        "Maximum resources, e.g. {cpu: '2', memory: 4Gi}; values are Kubernetes quantities."),
        json_schema_extra=extra(x_kubernetes_validations=[_RESOURCE_NAMES]))


ResourceRequirements.model_config["json_schema_extra"] = extra(x_kubernetes_validations=[
    cel("!has(self.requests) || !has(self.limits) || self.requests.all(k, !(k in self.limits) || "
        "!isQuantity(string(self.requests[k])) || !isQuantity(string(self.limits[k])) || "
        "quantity(string(self.requests[k])).compareTo(quantity(string(self.limits[k]))) <= 0)",
        "each request must be less than or equal to the limit of the same resource", ".requests"),
])


class Toleration(ApiModel):
    """A pod toleration, as in a pod spec."""

    key: str | None = Field(default=None, max_length=317, pattern=QUALIFIED_NAME_RE, description=(
        "Taint key the toleration applies to; empty matches all keys."))
    operator: Literal["Exists", "Equal"] | None = Field(default=None, description="Exists or Equal (default Equal).")
    value: str | None = Field(default=None, max_length=63, pattern=LABEL_VALUE_RE, description=(
        "Taint value the toleration matches (with Equal)."))
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all effects.")
    toleration_seconds: int | None = Field(default=None, description="How long a NoExecute taint is tolerated.")


Toleration.model_config["json_schema_extra"] = extra(x_kubernetes_validations=[
    cel("!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
        "a toleration with operator Exists has no value", ".value"),
    cel("has(self.key) || (has(self.operator) && self.operator == 'Exists')",
        "a toleration without a key must have operator Exists", ".operator"),
    cel("!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
        "tolerationSeconds needs effect NoExecute", ".tolerationSeconds"),
])


class KeySelector(ApiModel):
    """A key of a Secret or ConfigMap in the pod's namespace."""

    name: ObjectName = Field(description="Name of the Secret or ConfigMap.")
    key: str = Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$", description="Key to read.")
    optional: bool | None = Field(default=None, description="Whether the variable may be absent.")


class FieldSelector(ApiModel):
    """A field of the pod (downward API)."""

    field_path: str = Field(min_length=1, max_length=256, description="Path of the field, e.g. metadata.name.")
    api_version: str | None = Field(default=None, max_length=64, description="Version of the schema of fieldPath.")


class ResourceFieldSelector(ApiModel):
    """A resource of the container (downward API)."""

    resource: str = Field(min_length=1, max_length=64, description="Resource, e.g. limits.memory.")
    container_name: str | None = Field(default=None, max_length=63, description="Container; default this one.")
    divisor: Quantity | None = Field(default=None, description="Unit of the value, e.g. 1Mi.")


class EnvVarSource(ApiModel):
    """Where an environment variable's value comes from; exactly one source."""

    secret_key_ref: KeySelector | None = Field(default=None, description="A key of a Secret.")
    config_map_key_ref: KeySelector | None = Field(default=None, description="A key of a ConfigMap.")
    field_ref: FieldSelector | None = Field(default=None, description="A field of the pod.")
    resource_field_ref: ResourceFieldSelector | None = Field(default=None, description="A resource of the container.")


EnvVarSource.model_config["json_schema_extra"] = extra(x_kubernetes_validations=[
    cel("[has(self.secretKeyRef), has(self.configMapKeyRef), has(self.fieldRef), has(self.resourceFieldRef)]"
        ".filter(x, x).size() == 1",
        "valueFrom must set exactly one of secretKeyRef, configMapKeyRef, fieldRef and resourceFieldRef"),
])


class EnvVar(ApiModel):
    """An environment variable for the container, as in a pod spec."""

    name: str = Field(min_length=1, max_length=256, pattern=ENV_NAME_PATTERN, description=(
        f"Variable name; names starting with {RESERVED_ENV_PREFIX} are reserved for the operator."))
    value: str | None = Field(default=None, max_length=32768, description="Literal value.")
    value_from: EnvVarSource | None = Field(default=None, description="Source of the value, as in a pod spec.")


EnvVar.model_config["json_schema_extra"] = extra(x_kubernetes_validations=[
    cel(f"!self.name.startsWith('{RESERVED_ENV_PREFIX}')",
        f"names starting with {RESERVED_ENV_PREFIX} are set by the operator and cannot be overridden", ".name"),
    cel("!(has(self.value) && has(self.valueFrom))", "value and valueFrom are mutually exclusive", ".valueFrom"),
])


class PodOverrides(ApiModel):
    """Overrides applied to the pods modelloop creates. What the operator sets itself (its environment
    variables, labels and annotations, the security context) always wins."""

    image: str | None = Field(default=None, max_length=512, pattern=IMAGE_PATTERN, description=(
        "Runtime image to run instead of the operator's default (it must contain modelloop's entrypoints). "
        "A cluster may limit images with the chart's admission policy."))
    labels: dict[str, LabelValue] | None = Field(default=None, max_length=64, description=(
        "Extra labels on the pods; labels the operator sets (app.kubernetes.io/*, modelloop.dev/*) win."),
        json_schema_extra=extra(x_kubernetes_validations=key_rules("spec.podTemplate.labels")))
    annotations: dict[str, AnnotationValue] | None = Field(default=None, max_length=64, description=(
        "Extra annotations on the pods; annotations the operator sets win."),
        json_schema_extra=extra(x_kubernetes_validations=key_rules("spec.podTemplate.annotations")))
    node_selector: dict[str, LabelValue] | None = Field(default=None, max_length=64, description=(
        "Node labels the pods must run on."),
        json_schema_extra=extra(x_kubernetes_validations=key_rules("spec.podTemplate.nodeSelector")))
    tolerations: list[Toleration] | None = Field(default=None, max_length=64, description="Tolerations of the pods.")
    service_account_name: ObjectName | None = Field(default=None, description=(
        "Service account the pods run as (the chart's admission policy can forbid this override)."))
    env: list[EnvVar] | None = Field(default=None, max_length=128, description=(
        f"Extra environment variables of the container (names starting with {RESERVED_ENV_PREFIX} are refused)."),
        json_schema_extra=extra(x_kubernetes_list_type="map", x_kubernetes_list_map_keys=["name"]))
    priority_class_name: ObjectName | None = Field(default=None, description="Priority class of the pods.")


class MetricValue(ApiModel):
    """A named metric and its value."""

    name: str = Field(description="Metric name, e.g. accuracy or rmse.")
    value: float = Field(description="Metric value on the validation split.")
    display: str | None = Field(default=None, max_length=32, description=(
        "The value to four significant digits, as `kubectl get` prints it (the full value is `value`)."))
