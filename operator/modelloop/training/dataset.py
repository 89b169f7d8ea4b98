"""The training dataset: fetched from its URI, parsed (CSV or Parquet), checked against the spec.

Every check here runs before fitting, so a wrong column or type fails in seconds with a message
naming the spec field, not after a long fit.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelloop.api.training import DatasetSpec
from modelloop.artifacts import InvalidUriError, StorageError, read_object, sha256_bytes
from modelloop.artifacts.datasets import FORMATS_BY_EXTENSION, infer_format, parse_frame

from .errors import DatasetInvalidError, DatasetUnreadableError, SpecError, describe_exception
from .estimator import Task

@dataclass(frozen=True)
class Dataset:
    frame: Any  # pandas.DataFrame
    uri: str
    format: str
    sha256: str  # of the raw bytes, as stored


@dataclass(frozen=True)
class Columns:
    """The columns a model trains on, as resolved from the spec and the data."""

    target: str
    features: list[str]
    categorical: list[str]  # subset of features, in feature order


def dataset_format(spec: DatasetSpec) -> str:
    fmt = spec.format or infer_format(spec.uri)
    if fmt:
        return fmt
    raise SpecError(f"spec.dataset.format is not set and cannot be inferred from spec.dataset.uri '{spec.uri}' "
                    f"(known extensions: {', '.join(FORMATS_BY_EXTENSION)}); set it to csv or parquet")


def read_dataset(spec: DatasetSpec) -> Dataset:
    fmt = dataset_format(spec)
    try:
        raw = read_object(spec.uri, field="spec.dataset.uri")
    except InvalidUriError as exc:
        raise SpecError(str(exc)) from None
    except StorageError as exc:
        raise DatasetUnreadableError(f"spec.dataset.uri: {exc}") from None
    try:
        frame = parse_frame(raw, fmt)
    except Exception as exc:  # parsers raise many types (ParserError, ArrowInvalid, UnicodeDecodeError...)
        raise DatasetUnreadableError(f"spec.dataset.uri '{spec.uri}' cannot be parsed as {fmt}: "
                                     f"{describe_exception(exc)}") from None
    return Dataset(frame=frame, uri=spec.uri, format=fmt, sha256=sha256_bytes(raw))


def resolve_columns(dataset: Dataset, spec: DatasetSpec, task: Task) -> Columns:
    """Check the target and features exist and have usable types; decide which features are categorical."""
    frame, uri = dataset.frame, dataset.uri
    available = [str(c) for c in frame.columns]
    if spec.target not in frame.columns:
        raise DatasetInvalidError(f"spec.dataset.target '{spec.target}' is not a column of {uri}; "
                                  f"columns: {_names(available)}")
    features = list(spec.features) if spec.features else [c for c in frame.columns if c != spec.target]
    missing = [c for c in features if c not in frame.columns]
    if missing:
        raise DatasetInvalidError(f"spec.dataset.features lists columns missing from {uri}: {_names(missing)}; "
                                  f"columns: {_names(available)}")
    if spec.target in features:
        raise DatasetInvalidError(f"spec.dataset.features must not include the target '{spec.target}'")
    if not features:
        raise DatasetInvalidError(f"{uri} has no feature columns besides the target '{spec.target}'")
    declared = set(spec.categorical or ())
    stray = sorted(declared - set(features))
    if stray:
        raise DatasetInvalidError(f"spec.dataset.categorical lists columns that are not features: {_names(stray)}")

    kinds = {c: feature_kind(frame[c]) for c in features}
    unusable = [f"{c} ({frame[c].dtype})" for c, kind in kinds.items() if kind is None]
    if unusable:
        raise DatasetInvalidError(f"feature columns of {uri} have types a model cannot use: {_names(unusable)}; "
                                  f"convert them to numbers or strings, or leave them out of spec.dataset.features")
    categorical = [c for c in features if c in declared or kinds[c] == "categorical"]
    if len(frame) < 2:
        raise DatasetInvalidError(f"{uri} has {len(frame)} row(s); at least 2 are needed to train and validate")
    _check_target(frame[spec.target], spec.target, uri, task)
    return Columns(target=spec.target, features=features, categorical=categorical)


def feature_kind(series: Any) -> str | None:
    """'numeric', 'categorical', or None for types no model here can use (dates, durations, complex)."""
    from pandas.api import types

    dtype = series.dtype
    if types.is_bool_dtype(dtype) or types.is_integer_dtype(dtype) or types.is_float_dtype(dtype):
        return "numeric"
    if (types.is_string_dtype(dtype) or isinstance(dtype, types.CategoricalDtype)) and not types.is_object_dtype(dtype):
        return "categorical"
    if types.is_object_dtype(dtype):  # mixed Python objects: usable only if every value is a str or missing
        values = series.dropna()
        return "categorical" if values.map(lambda v: isinstance(v, str)).all() else None
    return None


def schema_dtype(series: Any) -> str:
    """The dtype a server must give the column: 'bool', numeric dtype names, or 'string'."""
    from pandas.api import types

    dtype = series.dtype
    if types.is_bool_dtype(dtype):
        return "bool"
    if types.is_numeric_dtype(dtype):
        return str(dtype).lower()
    return "string"


def _check_target(target: Any, name: str, uri: str, task: Task) -> None:
    from pandas.api import types

    missing = int(target.isna().sum())
    if missing:
        raise DatasetInvalidError(f"target column '{name}' of {uri} has {missing} missing value(s); drop or fill "
                                  f"those rows")
    if task == "regression":
        if not types.is_numeric_dtype(target.dtype) or types.is_bool_dtype(target.dtype):
            raise DatasetInvalidError(f"target column '{name}' of {uri} has type {target.dtype}; a regressor needs "
                                      f"a numeric target (or choose a classifier in spec.estimator.class)")
        return
    if feature_kind(target) is None:
        raise DatasetInvalidError(f"target column '{name}' of {uri} has type {target.dtype}, which cannot be a "
                                  f"class label")
    if types.is_float_dtype(target.dtype) and not (target % 1 == 0).all():
        raise DatasetInvalidError(f"target column '{name}' of {uri} holds continuous numbers; a classifier needs "
                                  f"class labels (or choose a regressor in spec.estimator.class)")
    if target.nunique() < 2:
        raise DatasetInvalidError(f"target column '{name}' of {uri} has a single class; a classifier needs at least 2")


def _names(names: list[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")
