"""metadata.json of a model version (docs/contracts.md, "Artifact format"): the one definition.

metadata.json comes from a store, which whoever holds its credentials can write (docs/security.md), so the
schema is strict: a key it does not know, a value of the wrong type or out of range, a list longer than a
trainer writes refuse the whole document, and the one value handed to numpy as a type (onnx.predictDtype) is
one of a closed set. The document is parsed only within the bounds of limits.py (bytes, values, nesting), and
refused at a bounded cost: an object of more keys than the format has is refused before pydantic sees it, and
lists stop at their first bad item (pydantic's errors, one per key or item, took hundreds of MiB before).
Writers produce every field.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass, fields, is_dataclass, replace
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, JsonValue, ValidationError, field_serializer, field_validator,
                      model_validator)
from pydantic.alias_generators import to_camel

from modelloop.api.training import BOOSTING_ESTIMATORS

from .errors import ArtifactLimitError, InvalidMetadataError
from .limits import ArtifactLimits, current_limits, load_json

ARTIFACT_FORMAT = "modelloop.artifact/v1"
METADATA_FILE = "metadata.json"
MODEL_FILE = "model.skops"
ONNX_FILE = "model.onnx"
# The model file of a version, by format: skops for scikit-learn; XGBoost's JSON and LightGBM's text model
# formats for theirs (native_model.py), which are served through model.onnx only.
SKOPS, XGBOOST_JSON, LIGHTGBM_TEXT = "skops", "xgboost-json", "lightgbm-text"
MODEL_FILES = {SKOPS: MODEL_FILE, XGBOOST_JSON: "model.xgboost.json", LIGHTGBM_TEXT: "model.lightgbm.txt"}
# The one format each boosting estimator is stored in (every other class: skops).
NATIVE_FORMATS = {path: XGBOOST_JSON if path.startswith("xgboost.") else LIGHTGBM_TEXT for path in BOOSTING_ESTIMATORS}
SHA256_PATTERN = r"^[0-9a-f]{64}$"
# A file of a version: a plain name, never a path (it is joined to the version's location).
FILE_NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$"
# The numpy types scikit-learn's predict() gives (`dtype.str`), which the ONNX path casts its labels to: never
# a free string for np.dtype, whose subarray types ("(100000000,)f8") allocate per row.
PREDICT_DTYPES = frozenset({"|b1", "|i1", "<i2", "<i4", "<i8", "|u1", "<u2", "<u4", "<u8", "<f2", "<f4", "<f8",
                            "|O"})
MAX_LABEL_CHARS = 1024  # labels as fixed-width text ("<U7"): at most this wide
_TEXT_DTYPE = re.compile(r"^<U([1-9][0-9]*)$")
# Lengths no trainer comes near; the byte and value bounds of limits.py hold the document as a whole. Every list
# field fails fast (fail_fast=True): pydantic reports one error per bad item, and per member of a union for each
# (a Category is five), so a 1 MB list of bad items built a million errors, 844 MiB, before this; now the first
# bad item ends the list's validation.
MAX_FEATURES = 100_000
MAX_CATEGORIES = 100_000
MAX_SKETCH_BINS = 10_000
MAX_ENTRIES = 256  # metrics, libraries, estimator params, opsets; and keys of any object (_crowded_object)

Name = Annotated[str, Field(max_length=1024)]
KubeName = Annotated[str, Field(max_length=253)]
Category = str | bool | int | float | None


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", allow_inf_nan=False)


class ModelFile(_Model):
    file: str = Field(default=MODEL_FILE, pattern=FILE_NAME_PATTERN)
    format: Literal["skops", "xgboost-json", "lightgbm-text"] = SKOPS
    sha256: str = Field(pattern=SHA256_PATTERN)
    size: int = Field(ge=0)
    trusted_types: list[Annotated[str, Field(max_length=512)]] = Field(default_factory=list, max_length=10_000,
                                                                       fail_fast=True)


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
    features: list[Name] = Field(max_length=MAX_FEATURES, fail_fast=True)
    error: str = Field(max_length=16_384)


class OnnxInfo(_Model):
    """model.onnx, the same model as an ONNX graph (data only), or why the version has none."""

    file: str | None = Field(default=None, pattern=FILE_NAME_PATTERN)
    format: Literal["onnx"] | None = None
    sha256: str | None = Field(default=None, pattern=SHA256_PATTERN)
    size: int | None = Field(default=None, ge=0)
    opsets: dict[Annotated[str, Field(max_length=128)], int] | None = Field(default=None, max_length=MAX_ENTRIES)
    predict_dtype: str | None = None  # numpy dtype of scikit-learn's predict(): the labels are cast to it
    input_rules: list[OnnxInputRule] | None = Field(default=None, max_length=16, fail_fast=True)
    parity: OnnxParity | None = None
    skipped: str | None = Field(default=None, max_length=16_384)  # why there is no model.onnx

    @field_validator("predict_dtype")
    @classmethod
    def _known_dtype(cls, value: str | None) -> str | None:
        text = _TEXT_DTYPE.match(value or "")
        if value is None or value in PREDICT_DTYPES or (text and int(text[1]) <= MAX_LABEL_CHARS):
            return value
        raise ValueError(f"must be one of {', '.join(sorted(PREDICT_DTYPES))} or <U1 to <U{MAX_LABEL_CHARS} "
                         f"(numpy dtype strings of labels and values)")

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

    name: KubeName | None = None
    namespace: KubeName | None = None
    uid: KubeName | None = None
    generation: int | None = None
    run: KubeName | None = None


class DatasetInfo(_Model):
    uri: str = Field(max_length=2048)
    format: Literal["csv", "parquet"]
    sha256: str = Field(pattern=SHA256_PATTERN)
    rows: int = Field(ge=0)


class EstimatorInfo(_Model):
    class_name: str = Field(alias="class", max_length=256)
    params: dict[Annotated[str, Field(max_length=256)], JsonValue] = Field(default_factory=dict,
                                                                           max_length=MAX_ENTRIES)


class MetricValue(_Model):
    name: str = Field(max_length=256)
    value: float


def is_text_feature(dtype: str, categorical: bool) -> bool:
    """A feature whose values are text: categorical with a dtype that is not a number or a bool. Every other
    feature is a number (int and bool categories are compared numerically by the trained encoder)."""
    return categorical and dtype != "bool" and not dtype.startswith(("int", "uint", "float"))


# The dtype a server gives a column (training.dataset.schema_dtype): bool, string or a numeric type name.
DTYPE_PATTERN = r"^[a-z][a-z0-9_\[\]]{0,63}$"


class FeatureSchema(_Model):
    name: Name
    dtype: str = Field(pattern=DTYPE_PATTERN)
    categorical: bool
    categories: list[Category] | None = Field(default=None, max_length=MAX_CATEGORIES, fail_fast=True)


class TargetSchema(_Model):
    name: Name
    dtype: str = Field(pattern=DTYPE_PATTERN)
    classes: list[Category] | None = Field(default=None, max_length=MAX_CATEGORIES, fail_fast=True)


class Schema(_Model):
    features: list[FeatureSchema] = Field(max_length=MAX_FEATURES, fail_fast=True)
    target: TargetSchema


class _Exact(BaseModel):
    """Keys exactly as written (no aliases), none other."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class SketchFeature(_Exact):
    name: Name
    kind: Literal["numeric", "categorical"]
    edges: list[float] | None = Field(default=None, max_length=MAX_SKETCH_BINS, fail_fast=True)
    categories: list[str] | None = Field(default=None, max_length=MAX_SKETCH_BINS, fail_fast=True)
    counts: list[int] = Field(max_length=MAX_SKETCH_BINS + 1, fail_fast=True)
    missing: int = Field(ge=0)


class Sketch(_Exact):
    """The shape of a sketch (docs/contracts.md); what it means is checked by modelloop.drift.sketch.validate."""

    format: str = Field(max_length=64)
    rows: int = Field(ge=0)
    features: list[SketchFeature] = Field(max_length=MAX_FEATURES, fail_fast=True)


class Calibration(_Exact):
    """The shape of a calibration (modelloop.outcomes.cbpe, which checks what it means)."""

    method: str = Field(max_length=32)
    x: list[float] = Field(max_length=1000, fail_fast=True)
    y: list[float] = Field(max_length=1000, fail_fast=True)
    eceBefore: float
    eceAfter: float
    eceIsotonic: float | None = None
    rows: int = Field(ge=0)


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
    libraries: dict[Annotated[str, Field(max_length=128)], Annotated[str, Field(max_length=128)]] = Field(
        max_length=MAX_ENTRIES)
    metric: MetricValue
    metrics: dict[Annotated[str, Field(max_length=256)], float] = Field(max_length=MAX_ENTRIES)
    schema_: Schema = Field(alias="schema")
    reference: dict[str, Any]
    prediction_reference: dict[str, Any]
    # Absent from versions written before the ONNX export: those are skops-only.
    onnx: OnnxInfo | None = None
    # Classifiers with predict_proba: the hold-out calibration of the predicted class's probability, for the
    # label-free accuracy estimate (modelloop.outcomes.cbpe, docs/cbpe.md). Absent from older versions,
    # regressors and classifiers without probabilities.
    calibration: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _model_format_fits_estimator(self) -> ArtifactMetadata:
        """A native model file holds one of the boosting estimators it is the format of, and a boosting
        estimator is only ever stored in its format; such a version is served through model.onnx, so it has
        one. (Errors name the rule, not the values: they come from a store.)"""
        native = NATIVE_FORMATS.get(self.estimator.class_name)
        if self.model.format == SKOPS and native is None:
            return self
        if native is None:
            raise ValueError(f"model.format {self.model.format} holds only {', '.join(sorted(NATIVE_FORMATS))}; "
                             f"estimator.class is none of them")
        if self.model.format != native:
            raise ValueError("estimator.class is a boosting estimator stored in another model.format than its own "
                             f"({', '.join(f'{c}: {f}' for c, f in NATIVE_FORMATS.items())})")
        if self.model.trusted_types:
            raise ValueError("model.trustedTypes lists skops types for a model file that is not skops")
        if self.onnx is None or self.onnx.file is None:
            raise ValueError(f"a {self.model.format} version is served through model.onnx, which onnx does not name")
        return self

    @field_validator("reference", "prediction_reference")
    @classmethod
    def _is_sketch(cls, value: dict[str, Any]) -> dict[str, Any]:
        from modelloop.drift.sketch import validate  # the sketch format's one definition (numpy, pandas)

        Sketch.model_validate(value)
        return validate(value)

    @field_validator("calibration")
    @classmethod
    def _is_calibration(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        from modelloop.outcomes.cbpe import validate_calibration  # the format's one definition (numpy only)

        if value is None:
            return None
        Calibration.model_validate(value)
        return validate_calibration(value)

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
    """Parse a metadata.json object; InvalidMetadataError names `source`, each bad field and the rule it breaks
    (never the value)."""
    crowded = _crowded_object(data)
    if crowded is not None:  # pydantic would build an error per unknown key: 190,000 keys held +270 MiB for 6 s
        raise InvalidMetadataError(f"{source} is not a valid {ARTIFACT_FORMAT} document: {crowded}: more than "
                                   f"{MAX_ENTRIES} keys, which no object of the format has")
    try:
        return ArtifactMetadata.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False)
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in errors[:20])
        more = f" (and {len(errors) - 20} more)" if len(errors) > 20 else ""
        raise InvalidMetadataError(f"{source} is not a valid {ARTIFACT_FORMAT} document: {problems}{more}") from None


def _crowded_object(document: Any) -> str | None:
    """Where (a dotted path) `document` holds an object of more than MAX_ENTRIES keys, or None."""
    stack: list[tuple[Any, str]] = [(document, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, dict):
            if len(value) > MAX_ENTRIES:
                return path or "(root)"
            stack.extend((item, f"{path}.{key}" if path else str(key)) for key, item in value.items()
                         if isinstance(item, (dict, list)))
        else:
            stack.extend((item, f"{path}.{i}") for i, item in enumerate(value) if isinstance(item, (dict, list)))
    return None


def decode_metadata(data: bytes, *, source: str = "metadata.json", limits: ArtifactLimits | None = None
                    ) -> dict[str, Any]:
    """The JSON object of metadata.json bytes, validated; InvalidMetadataError names `source`."""
    document = _json_object(data, source, limits or current_limits())
    validate_metadata(document, source=source)
    return document


def parse_metadata(data: bytes, *, source: str = "metadata.json", limits: ArtifactLimits | None = None
                   ) -> ArtifactMetadata:
    """metadata.json bytes, decoded within `limits` (default: the environment's settings) and validated."""
    return validate_metadata(_json_object(data, source, limits or current_limits()), source=source)


def _json_object(data: bytes, source: str, limits: ArtifactLimits) -> dict[str, Any]:
    if len(data) > limits.metadata_bytes:
        raise limits.refuse("metadata_bytes", f"{source} is larger than")
    try:
        document = load_json(data, limits, "metadata_nodes", source)
    except ArtifactLimitError:
        raise
    except (ValueError, RecursionError) as exc:
        raise InvalidMetadataError(f"{source} is not JSON: {type(exc).__name__}") from None
    if not isinstance(document, dict):
        raise InvalidMetadataError(f"{source} is not a JSON object")
    return document


@dataclass(frozen=True)
class VersionSummary:
    """What a reader of many versions keeps of one verified metadata.json (the operator, between reconciles):
    the digests and the fields its controllers use, none of the rest. `nbytes` is about what it holds in
    memory, for caches bounded by bytes."""

    uri: str
    sha256: str  # of the model file
    metadata_sha256: str  # of metadata.json's bytes
    version: int
    task: str
    metric: dict[str, Any]  # name, value
    metrics: dict[str, float]
    features: tuple[dict[str, Any], ...]  # name, dtype, categorical
    dataset: dict[str, Any]  # uri, format
    reference: dict[str, Any]  # the sketch drift is measured against
    onnx: dict[str, Any] | None  # {"file": ...} or {"skipped": ...}; None before the ONNX export
    nbytes: int = 0

    @classmethod
    def of(cls, metadata: ArtifactMetadata, *, uri: str, metadata_sha256: str) -> VersionSummary:
        onnx = None if metadata.onnx is None else (
            {"file": metadata.onnx.file} if metadata.onnx.file else {"skipped": metadata.onnx.skipped})
        summary = cls(
            uri=uri, sha256=metadata.model.sha256, metadata_sha256=metadata_sha256, version=metadata.version,
            task=metadata.task, metric=metadata.metric.model_dump(), metrics=dict(metadata.metrics),
            features=tuple({"name": f.name, "dtype": f.dtype, "categorical": f.categorical}
                           for f in metadata.schema_.features),
            dataset={"uri": metadata.dataset.uri, "format": metadata.dataset.format},
            reference=metadata.reference, onnx=onnx)
        return replace(summary, nbytes=approximate_size(summary))

    def document(self) -> dict[str, Any]:
        """These fields as metadata.json spells them (a part of its document)."""
        document = {"version": self.version, "task": self.task, "metric": dict(self.metric),
                    "metrics": dict(self.metrics), "schema": {"features": list(self.features)},
                    "dataset": dict(self.dataset), "reference": self.reference}
        if self.onnx is not None:
            document["onnx"] = dict(self.onnx)
        return document


def approximate_size(value: Any) -> int:
    """Bytes `value` holds: sys.getsizeof over dicts, lists, tuples, the fields of dataclasses and what they
    hold, containers shared counted once (numbers and strings each time: an overestimate)."""
    seen: set[int] = set()
    total, stack = 0, [value]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        total += sys.getsizeof(item)
        if isinstance(item, dict):
            members: Any = [*item.keys(), *item.values()]
        elif isinstance(item, (list, tuple, set, frozenset)):
            members = item
        elif is_dataclass(item) and not isinstance(item, type):
            members = [getattr(item, f.name) for f in fields(item)]
        else:
            continue
        inner = [m for m in members if isinstance(m, _CONTAINERS) or is_dataclass(m)]
        total += sum(map(sys.getsizeof, members)) - sum(map(sys.getsizeof, inner))  # scalars, at C speed
        stack.extend(inner)
    return total


_CONTAINERS = (dict, list, tuple, set, frozenset)
