"""metadata.json of a model version (docs/contracts.md, "Artifact format"): the one definition.

Readers ignore keys they do not know (a newer writer may add some); writers produce every field.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer, field_validator, model_validator
from pydantic.alias_generators import to_camel

from .errors import InvalidMetadataError

ARTIFACT_FORMAT = "modelloop.artifact/v1"
METADATA_FILE = "metadata.json"
MODEL_FILE = "model.skops"
ONNX_FILE = "model.onnx"
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


class OnnxParity(_Model):
    """How closely model.onnx reproduced the scikit-learn model (docs/artifacts.md): on the hold-out rows
    and on probe rows (missing, infinite and out-of-range values, missing and unseen categories)."""

    rows: int = Field(ge=0)  # hold-out rows compared
    probe_rows: int = Field(default=0, ge=0)
    labels_equal: bool | None = None  # classifiers: every predicted label identical, in value and type
    max_abs_diff: float | None = Field(default=None, ge=0)  # hold-out: largest |onnx - scikit-learn|
    max_diff: float | None = Field(default=None, ge=0)  # every row; compared with the tolerance
    tolerance: float = Field(gt=0)


class OnnxInputRule(_Model):
    """Values the scikit-learn model refuses in some features, with its error: the ONNX path refuses them too."""

    values: Literal["nan", "infinite", "float32-overflow"]
    features: list[str]
    error: str


class OnnxInfo(_Model):
    """model.onnx, the same model as an ONNX graph (data only), or why the version has none."""

    file: str | None = Field(default=None, pattern=FILE_NAME_PATTERN)
    format: Literal["onnx"] | None = None
    sha256: str | None = Field(default=None, pattern=SHA256_PATTERN)
    size: int | None = Field(default=None, ge=0)
    opsets: dict[str, int] | None = None
    predict_dtype: str | None = None  # numpy dtype of scikit-learn's predict(): the labels are cast to it
    input_rules: list[OnnxInputRule] | None = None
    parity: OnnxParity | None = None
    skipped: str | None = None  # why there is no model.onnx

    @model_validator(mode="after")
    def _one_state(self) -> OnnxInfo:
        present = (self.file, self.format, self.sha256, self.size, self.predict_dtype)
        if self.skipped is None and any(v is None for v in present):
            raise ValueError("onnx needs file, format, sha256, size and predictDtype, or skipped")
        if self.skipped is not None and self.file is not None:
            raise ValueError("onnx has a file and says it was skipped")
        return self


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


def is_text_feature(dtype: str, categorical: bool) -> bool:
    """A feature whose values are text: categorical with a dtype that is not a number or a bool. Every other
    feature is a number (int and bool categories are compared numerically by the trained encoder)."""
    return categorical and dtype != "bool" and not dtype.startswith(("int", "uint", "float"))


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
    # Absent from versions written before the ONNX export: those are skops-only.
    onnx: OnnxInfo | None = None
    # Classifiers with predict_proba: the hold-out calibration of the predicted class's probability, for the
    # label-free accuracy estimate (modelloop.outcomes.cbpe, docs/cbpe.md). Absent from older versions,
    # regressors and classifiers without probabilities.
    calibration: dict[str, Any] | None = None

    @field_validator("reference", "prediction_reference")
    @classmethod
    def _is_sketch(cls, value: dict[str, Any]) -> dict[str, Any]:
        from modelloop.drift.sketch import validate  # the sketch format's one definition (numpy, pandas)

        return validate(value)

    @field_validator("calibration")
    @classmethod
    def _is_calibration(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        from modelloop.outcomes.cbpe import validate_calibration  # the format's one definition (numpy only)

        return None if value is None else validate_calibration(value)

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
