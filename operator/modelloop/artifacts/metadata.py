"""metadata.json of a model version (docs/contracts.md, "Artifact format"): the one definition.

Readers ignore keys they do not know (a newer writer may add some); writers produce every field.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer, field_validator
from pydantic.alias_generators import to_camel

from .errors import InvalidMetadataError

ARTIFACT_FORMAT = "modelloop.artifact/v1"
METADATA_FILE = "metadata.json"
MODEL_FILE = "model.skops"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
# A file of a version: a plain name, never a path (it is joined to the version's location).
FILE_NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$"


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class ModelFile(_Model):
    file: str = Field(default=MODEL_FILE, pattern=FILE_NAME_PATTERN)
    format: Literal["skops"] = "skops"
    sha256: str = Field(pattern=SHA256_PATTERN)
    size: int = Field(ge=0)
    trusted_types: list[str] = Field(default_factory=list)


class TrainingIdentity(_Model):
    """The ModelTraining and run that wrote the version."""

    name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    run: str | None = None


class DatasetInfo(_Model):
    uri: str
    format: Literal["csv", "parquet"]
    sha256: str = Field(pattern=SHA256_PATTERN)
    rows: int = Field(ge=0)


class EstimatorInfo(_Model):
    class_name: str = Field(alias="class")
    params: dict[str, Any] = Field(default_factory=dict)


class MetricValue(_Model):
    name: str
    value: float


class FeatureSchema(_Model):
    name: str
    dtype: str
    categorical: bool
    categories: list[Any] | None = None


class TargetSchema(_Model):
    name: str
    dtype: str
    classes: list[Any] | None = None


class Schema(_Model):
    features: list[FeatureSchema]
    target: TargetSchema


class ArtifactMetadata(_Model):
    """Everything known about one immutable model version."""

    format: Literal["modelloop.artifact/v1"] = ARTIFACT_FORMAT
    version: int = Field(ge=1)
    created: datetime
    model: ModelFile
    training: TrainingIdentity
    dataset: DatasetInfo
    estimator: EstimatorInfo
    task: Literal["classification", "regression"]
    libraries: dict[str, str]
    metric: MetricValue
    metrics: dict[str, float]
    schema_: Schema = Field(alias="schema")
    reference: dict[str, Any]
    prediction_reference: dict[str, Any]

    @field_validator("reference", "prediction_reference")
    @classmethod
    def _is_sketch(cls, value: dict[str, Any]) -> dict[str, Any]:
        from modelloop.drift.sketch import validate  # the sketch format's one definition (numpy, pandas)

        return validate(value)

    @field_validator("created")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)

    @field_serializer("created")
    def _rfc3339(self, value: datetime) -> str:
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")

    def wire(self) -> dict[str, Any]:
        """The JSON object of metadata.json (camelCase keys, unset optionals left out)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def validate_metadata(data: dict[str, Any], *, source: str = "metadata.json") -> ArtifactMetadata:
    """Parse a metadata.json object; InvalidMetadataError names `source` and each bad field."""
    try:
        return ArtifactMetadata.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in exc.errors())
        raise InvalidMetadataError(f"{source} is not a valid {ARTIFACT_FORMAT} document: {problems}") from None


def decode_metadata(data: bytes, *, source: str = "metadata.json") -> dict[str, Any]:
    """The JSON object of metadata.json bytes, validated; InvalidMetadataError names `source`."""
    document = _json_object(data, source)
    validate_metadata(document, source=source)
    return document


def parse_metadata(data: bytes, *, source: str = "metadata.json") -> ArtifactMetadata:
    """metadata.json bytes, decoded and validated."""
    return validate_metadata(_json_object(data, source), source=source)


def _json_object(data: bytes, source: str) -> dict[str, Any]:
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidMetadataError(f"{source} is not JSON: {type(exc).__name__}") from None
    if not isinstance(document, dict):
        raise InvalidMetadataError(f"{source} is not a JSON object")
    return document
