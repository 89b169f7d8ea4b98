"""The model's feature schema (metadata.json `schema.features`) and the conversion of request values into
the rows a prediction call takes.

A feature is text when it is categorical with dtype "string"; every other feature (numeric, bool, or a
categorical with numeric or bool dtype) is a number, which the trainer's encoder compares numerically.
Rows are kept in one of two forms, chosen once per model:
- dense: a float64 matrix of shape [n, n_features] in schema order, when no feature is text;
- columns: a dict feature name -> 1-D array (float64 for numbers, object holding str or None for
  text), when some feature is text.
Both merge by concatenation, so a batch of requests is one prediction call.

A client's request is bounded before it costs anything (`RequestLimits`): its rows are counted before
its values are converted, and each text value is measured before it is kept (a number is measured
before its text is written: `1e308` as text has 309 digits).
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, Mapping, Sequence, Union

import numpy as np
from modelloop.artifacts.metadata import is_text_feature

from .errors import ClientError, bad_request, over_limit

Rows = Union[np.ndarray, dict[str, np.ndarray]]
# JSON values a request may hold besides its rows: id, parameters, outputs, input names and shapes.
ENVELOPE_VALUES = 4096


@dataclass(frozen=True)
class RequestLimits:
    """What one request may hold (docs/security.md, "Clients of the inference port"); each is checked before
    the work it bounds."""

    max_rows: int  # --max-rows
    max_string_length: int  # --max-string-length: characters of one text value
    # JSON values (numbers, strings, lists, objects, keys) of one body, counted before it is parsed
    max_values: int

    @classmethod
    def for_model(cls, *, max_rows: int, max_string_length: int, features: int) -> RequestLimits:
        """The limits for a model of `features` features. A body may hold the JSON values that max_rows rows
        take in the most verbose form the server reads (V1 objects: a key and a value per feature; V2 [n, 1]
        columns: a list per value), with half as much again for separators inside text, plus the envelope."""
        return cls(max_rows, max_string_length, max_values=3 * max_rows * (features + 1) + ENVELOPE_VALUES)


def too_many_rows(count: int, limits: RequestLimits) -> ClientError:
    return over_limit("rows", f"the request holds {count} rows; the limit is {limits.max_rows} rows per request "
                              "(--max-rows); send them in several requests")


def check_column_rows(columns: Mapping[str, Any], limits: RequestLimits) -> None:
    """Each list of values of `columns` (feature name -> values) is held to `limits.max_rows` before any is
    converted."""
    for values in columns.values():
        if isinstance(values, list) and len(values) > limits.max_rows:
            raise too_many_rows(len(values), limits)


def too_long(what: str, max_length: int) -> ClientError:
    return over_limit("string_length", f"{what} holds a text value longer than {max_length} characters, the "
                                       "limit per value (--max-string-length)")


@dataclass(frozen=True)
class Feature:
    name: str
    dtype: str
    categorical: bool

    @property
    def text(self) -> bool:
        return is_text_feature(self.dtype, self.categorical)

    @property
    def datatype(self) -> str:
        """The V2 datatype a client sends for this feature (any numeric datatype is accepted for numbers)."""
        if self.text:
            return "BYTES"
        if self.dtype == "bool":
            return "BOOL"
        return "INT64" if self.dtype.startswith(("int", "uint")) else "FP64"


class InputSchema:
    """What a prediction call expects: the features in training order and which are categorical."""

    def __init__(self, features: Sequence[Feature]) -> None:
        if not features:
            raise ValueError("the feature schema is empty: metadata.json schema.features lists no feature")
        self.features = tuple(features)
        self.names = tuple(f.name for f in self.features)
        self.by_name = {f.name: f for f in self.features}
        self.dense = not any(f.text for f in self.features)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> InputSchema:
        return cls([Feature(name=str(f["name"]), dtype=str(f.get("dtype", "float64")),
                            categorical=bool(f.get("categorical", False)))
                    for f in metadata["schema"]["features"]])

    # -- building rows ------------------------------------------------------------------------------

    def rows_from_matrix(self, values: Any, what: str) -> np.ndarray:
        """A [n, n_features] matrix of numbers (only for an all-numeric schema)."""
        if not self.dense:
            text = ", ".join(f.name for f in self.features if f.text)
            raise bad_request(f"{what}: the model has text features ({text}), so rows cannot be "
                              f"one numeric matrix; send one input per feature, named {', '.join(self.names)}")
        matrix = numeric_array(values, what)
        if matrix.ndim != 2 or matrix.shape[1] != len(self.names):
            raise bad_request(f"{what} has shape {list(matrix.shape)}; expected [n, {len(self.names)}]: "
                              f"rows of the {len(self.names)} features {', '.join(self.names)}")
        return matrix

    def rows_from_columns(self, columns: Mapping[str, Any], what: str, max_string_length: int | None = None
                          ) -> Rows:
        """One sequence of values per feature, every feature present, all of one length; text values of at
        most `max_string_length` characters. (The callers bound the lengths before: V2 by the shapes, V1 by
        `check_column_rows`.)"""
        unknown = [name for name in columns if name not in self.by_name]
        if unknown:
            raise bad_request(f"{what}: unknown feature {unknown[0]!r}; the model's features are "
                              f"{', '.join(self.names)}")
        missing = [name for name in self.names if name not in columns]
        if missing:
            raise bad_request(f"{what}: missing feature {missing[0]!r}; expected one value per feature: "
                              f"{', '.join(self.names)}")
        arrays: dict[str, np.ndarray] = {}
        length = None
        for feature in self.features:
            values = columns[feature.name]
            where = f"{what} feature {feature.name!r}"
            if feature.text:
                array = text_array(values, where, max_string_length)
            else:
                array = numeric_array(values, where)
                if array.ndim == 2 and array.shape[1] == 1:
                    array = array[:, 0]
                if array.ndim != 1:
                    raise bad_request(f"{where} has shape {list(array.shape)}; expected [n] (one value per row)")
            if length is None:
                length = len(array)
            elif len(array) != length:
                raise bad_request(f"{what}: feature {feature.name!r} has {len(array)} values but "
                                  f"{self.names[0]!r} has {length}; every feature needs one value per row")
            arrays[feature.name] = array
        if self.dense:
            return np.column_stack([arrays[name] for name in self.names]) if length else \
                np.empty((0, len(self.names)))
        return arrays

    def rows_from_records(self, records: Sequence[Any], what: str, limits: RequestLimits | None = None) -> Rows:
        """A list of rows, each either a list of values in feature order or an object keyed by feature name."""
        if not records:
            raise bad_request(f"{what} is empty; send at least one row")
        if limits is not None and len(records) > limits.max_rows:
            raise too_many_rows(len(records), limits)
        max_length = limits.max_string_length if limits is not None else None
        if all(isinstance(r, Mapping) for r in records):
            columns: dict[str, list[Any]] = {name: [] for name in self.names}
            for i, record in enumerate(records):
                for key in record:
                    if key not in self.by_name:
                        raise bad_request(f"{what}[{i}]: unknown feature {key!r}; the model's features are "
                                          f"{', '.join(self.names)}")
                for name in self.names:
                    if name not in record:
                        raise bad_request(f"{what}[{i}]: missing feature {name!r}")
                    columns[name].append(record[name])
            return self.rows_from_columns(columns, what, max_length)
        if not all(isinstance(r, list) for r in records):
            raise bad_request(f"{what} must be a list of rows: each a list of {len(self.names)} values in "
                              f"feature order, or an object keyed by feature name")
        if self.dense:
            return self.rows_from_matrix(records, what)
        for i, record in enumerate(records):
            if len(record) != len(self.names):
                raise bad_request(f"{what}[{i}] has {len(record)} values; expected {len(self.names)}: "
                                  f"{', '.join(self.names)}")
        return self.rows_from_columns({name: [r[j] for r in records] for j, name in enumerate(self.names)}, what,
                                      max_length)

    # -- batches ------------------------------------------------------------------------------------

    def count(self, rows: Rows) -> int:
        if isinstance(rows, np.ndarray):
            return rows.shape[0]
        return len(rows[self.names[0]])

    def merge(self, parts: Sequence[Rows]) -> Rows:
        if len(parts) == 1:
            return parts[0]
        if isinstance(parts[0], np.ndarray):
            return np.concatenate(parts, axis=0)
        return {name: np.concatenate([p[name] for p in parts]) for name in self.names}  # type: ignore[index]


def numeric_array(values: Any, what: str) -> np.ndarray:
    """A float64 array of `values` (nested lists or an array); None becomes NaN; strings are an error."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "fiub":
        return values.astype(np.float64, copy=False)
    try:
        array = np.asarray(values)
    except (ValueError, TypeError):
        raise bad_request(f"{what} is ragged: its rows have different lengths") from None
    kind = array.dtype.kind
    if kind in "fiub":
        return array.astype(np.float64, copy=False)
    if kind == "O" and all(v is None or isinstance(v, (bool, int, float)) for v in array.flat):
        return array.astype(np.float64)  # numbers with None (missing) among them
    culprit = _first_non_number(values)
    if isinstance(culprit, list):
        raise bad_request(f"{what} is ragged: its rows have different lengths")
    raise bad_request(f"{what} must hold numbers; found {_show(culprit)}")


def _first_non_number(values: Any) -> Any:
    """The first element of nested lists that is neither a number nor None (a list when ragged)."""
    stack = [values]
    while stack:
        value = stack.pop()
        if isinstance(value, (list, tuple)):
            stack.extend(reversed(value))
        elif value is not None and not isinstance(value, (bool, int, float, np.number)):
            return value
    return []


def text_array(values: Any, what: str, max_length: int | None = None) -> np.ndarray:
    """A 1-D object array of str or None (None, NaN and "" are missing, numbers become their text); a text
    value longer than `max_length` characters is refused before it is kept."""
    if isinstance(values, np.ndarray):
        values = values.tolist()
    if not isinstance(values, list):
        raise bad_request(f"{what} must be a list of values")
    if values and isinstance(values[0], list):  # shape [n, 1] sent nested
        if not all(isinstance(v, list) and len(v) == 1 for v in values):
            raise bad_request(f"{what} must be a list with one value per row")
        values = [v[0] for v in values]
    if max_length is None:
        max_length = sys.maxsize
    # An integral float is written with one digit per power of ten: the largest whose text can fit, checked
    # before its text is written (1e308 has 309 digits).
    largest = 10.0 ** max_length if max_length < 308 else math.inf
    out = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        if value is None or isinstance(value, str):
            if value == "":
                value = None
            elif value is not None and len(value) > max_length:
                raise too_long(what, max_length)
            out[i] = value
            continue
        if isinstance(value, float):
            if math.isnan(value):
                out[i] = None
                continue
            if not value.is_integer():
                text = str(value)
            elif abs(value) < largest:
                text = str(int(value))
            else:
                raise too_long(what, max_length)
        elif isinstance(value, (bool, int)):
            text = str(value).lower() if isinstance(value, bool) else str(value)
        else:
            raise bad_request(f"{what}[{i}] must be a string or number; found {_show(value)}")
        if len(text) > max_length:
            raise too_long(what, max_length)
        out[i] = text
    return out


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
