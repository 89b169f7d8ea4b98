"""Sketches: per-feature counts over bins fixed by a reference (docs/contracts.md, "Sketch format").

This module owns the format: building a reference from training columns, counting data into its
bins (vectorised), the thread-safe live accumulator a model server keeps, merging sketches of
several pods, the window between two cumulative snapshots, and validation. The statistics over
sketches live in `modelloop.drift.stats`.

A sketch is a plain JSON-serialisable dict; every function returns a new dict and never mutates
its arguments.
"""
from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd

from .grid import bin_counts, quantiles

FORMAT = "modelloop.sketch/v1"
# 100 reference-quantile bins: the binned KS statistic and Wasserstein distance are then within about
# 1% of the exact ones (docs/drift.md, "Binning tolerance"), for ~1 KiB of JSON per feature.
DEFAULT_BINS = 100
# Categories beyond the 50 most frequent of the reference share the "other" count.
DEFAULT_MAX_CATEGORIES = 50
NUMERIC = "numeric"
CATEGORICAL = "categorical"
KINDS = (NUMERIC, CATEGORICAL)
# Keys a snapshot carries about the process that counted; they make no sense on a merge of several.
PROCESS_KEYS = ("instance", "started")


class SketchError(ValueError):
    """A malformed sketch, or two sketches (or a sketch and data) that do not fit together."""


# ---------------------------------------------------------------------------------------------------
# Value conversion: numbers and category strings, vectorised where the input allows it.

def _as_array(values: Any) -> np.ndarray | pd.Series:
    if isinstance(values, (np.ndarray, pd.Series, pd.Index, pd.Categorical)):
        return values
    return np.asarray(values, dtype=object) if isinstance(values, (list, tuple)) else np.asarray(values)


def as_float(values: Any) -> np.ndarray:
    """float64 values, NaN for missing; values that are not numbers (e.g. "abc") count as missing."""
    arr = _as_array(values)
    if isinstance(arr, np.ndarray) and arr.dtype.kind in "fiub":
        return arr.astype(np.float64, copy=False)
    try:
        if isinstance(arr, (pd.Series, pd.Index)):
            return arr.to_numpy(dtype=np.float64, na_value=np.nan)
        return np.asarray(arr, dtype=np.float64)
    except (TypeError, ValueError):
        coerced = pd.to_numeric(pd.Series(np.asarray(arr, dtype=object)), errors="coerce")
        return coerced.to_numpy(dtype=np.float64, na_value=np.nan)


def category_key(value: Any) -> str | None:
    """The string a category is compared as; None for a missing value (None, NaN, NA, "").

    Integral floats read as integers ("1", not "1.0"), so a CSV column of ints with gaps (read as
    floats) and JSON ints sent to the model server fall in the same category.
    """
    if value is None or (not isinstance(value, (str, bytes)) and pd.isna(value)):
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    elif isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    key = str(value)
    return key or None


def _factorize(values: Any) -> tuple[np.ndarray, list[str | None]]:
    """Codes into a small list of category keys; code -1 (and a None key) is a missing value."""
    arr = _as_array(values)
    if isinstance(arr, np.ndarray) and arr.ndim != 1:
        arr = arr.ravel()
    codes, uniques = pd.factorize(arr, use_na_sentinel=True)
    return codes, [category_key(u) for u in uniques]


def is_categorical(values: Any) -> bool:
    """True for columns of strings (or pandas categoricals): they cannot be binned as numbers."""
    arr = _as_array(values)
    if isinstance(arr, np.ndarray) and arr.dtype.kind in "fiub":
        return False
    if isinstance(getattr(arr, "dtype", None), pd.CategoricalDtype) or isinstance(arr, pd.Categorical):
        return True
    return pd.api.types.infer_dtype(arr, skipna=True) in ("string", "bytes", "mixed", "mixed-integer", "categorical")


# ---------------------------------------------------------------------------------------------------
# Binners: one per feature, compiled once from the sketch so counting is a few numpy calls.

@dataclass(frozen=True)
class _Binner:
    name: str
    kind: str
    edges: np.ndarray | None  # numeric
    index: dict[str, int] | None  # categorical: category -> bin; unseen -> len(index) ("other")

    @property
    def nbins(self) -> int:
        return len(self.edges) + 1 if self.kind == NUMERIC else len(self.index) + 1

    @classmethod
    def of(cls, feature: dict) -> "_Binner":
        if feature["kind"] == NUMERIC:
            return cls(feature["name"], NUMERIC, np.asarray(feature["edges"], dtype=np.float64), None)
        return cls(feature["name"], CATEGORICAL, None, {c: i for i, c in enumerate(feature["categories"])})

    def count(self, values: Any) -> tuple[np.ndarray, int]:
        """(counts per bin as int64, missing) of `values`."""
        if self.kind == NUMERIC:
            x = as_float(values).ravel()
            nan = np.isnan(x)
            missing = int(np.count_nonzero(nan))
            if not self.edges.size:
                return np.array([x.size - missing], dtype=np.int64), missing
            return bin_counts(x[~nan] if missing else x, self.edges).astype(np.int64, copy=False), missing
        codes, keys = _factorize(values)
        other, missing_bin = len(self.index), len(self.index) + 1
        lookup = np.array([missing_bin if k is None else self.index.get(k, other) for k in keys] + [missing_bin],
                          dtype=np.intp)
        # code -1 (missing) indexes the trailing missing_bin entry of lookup.
        counts = np.bincount(lookup[codes], minlength=missing_bin + 1)
        return counts[:missing_bin].astype(np.int64, copy=False), int(counts[missing_bin])


def _binners(sketch: dict) -> list[_Binner]:
    return [_Binner.of(f) for f in sketch["features"]]


def _column_items(columns: Mapping[str, Any]) -> dict[str, Any]:
    """Name -> values of a mapping or a DataFrame, all of one length (SketchError otherwise)."""
    items = {str(name): values for name, values in columns.items()}
    lengths = {name: len(v) if hasattr(v, "__len__") else np.size(v) for name, v in items.items()}
    if len(set(lengths.values())) > 1:
        raise SketchError(f"columns differ in length: {lengths}; every column must have one value per row")
    return items


def _rows_of(items: dict[str, Any]) -> int:
    return len(next(iter(items.values()))) if items else 0


def _count_columns(binners: list[_Binner], columns: Mapping[str, Any]) -> tuple[int, list[np.ndarray], np.ndarray]:
    items = _column_items(columns)
    absent = [b.name for b in binners if b.name not in items]
    if absent:
        raise SketchError(f"features {absent} of the sketch are not in the data (columns: {list(items)[:20]})")
    counted = [b.count(items[b.name]) for b in binners]
    return _rows_of(items), [c for c, _ in counted], np.array([m for _, m in counted], dtype=np.int64)


# ---------------------------------------------------------------------------------------------------
# Building and counting.

def _numeric_feature(name: str, values: Any, bins: int) -> dict:
    x = as_float(values).ravel()
    is_finite = np.isfinite(x)
    finite = x if is_finite.all() else x[is_finite]
    if finite.size and bins > 1:
        # Unique quantiles: a constant column gets one edge, a column of few values a few.
        edges = np.unique(quantiles(finite, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    else:
        edges = np.empty(0)
    binner = _Binner(name, NUMERIC, edges, None)
    counts, missing = binner.count(x)
    return {"name": name, "kind": NUMERIC, "edges": edges.tolist(), "counts": counts.tolist(), "missing": missing}


def _categorical_feature(name: str, values: Any, max_categories: int) -> dict:
    codes, keys = _factorize(values)
    per_code = np.bincount(codes[codes >= 0], minlength=len(keys))
    totals: dict[str, int] = {}
    missing = int(np.count_nonzero(codes < 0))
    for key, n in zip(keys, per_code.tolist()):
        if key is None:
            missing += n
        else:  # several raw values (1, 1.0, "1") may share one key
            totals[key] = totals.get(key, 0) + n
    ranked = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))  # most frequent first, ties by name
    kept, rest = ranked[:max_categories], ranked[max_categories:]
    return {"name": name, "kind": CATEGORICAL, "categories": [k for k, _ in kept],
            "counts": [n for _, n in kept] + [sum(n for _, n in rest)], "missing": missing}


def build_reference(columns: Mapping[str, Any], categorical: Iterable[str] = (), bins: int = DEFAULT_BINS,
                    max_categories: int = DEFAULT_MAX_CATEGORIES) -> dict:
    """A reference sketch of `columns` (a mapping or DataFrame), features in the mapping's order.

    Columns named in `categorical`, and columns of strings, are categorical; the others numeric,
    binned at `bins` reference quantiles (fewer when values repeat).
    """
    if not isinstance(bins, int) or bins < 1:
        raise SketchError(f"bins must be an integer >= 1, got {bins!r}")
    if not isinstance(max_categories, int) or max_categories < 1:
        raise SketchError(f"max_categories must be an integer >= 1, got {max_categories!r}")
    items = _column_items(columns)
    categorical = set(categorical)
    unknown = categorical - set(items)
    if unknown:
        raise SketchError(f"categorical columns {sorted(unknown)} are not in the data (columns: {list(items)[:20]})")
    features = [
        _categorical_feature(str(name), values, max_categories)
        if name in categorical or is_categorical(values) else _numeric_feature(str(name), values, bins)
        for name, values in items.items()
    ]
    return {"format": FORMAT, "rows": _rows_of(items), "features": features}


def empty_like(reference: dict) -> dict:
    """A sketch with the bins of `reference` and zero counts (no process keys)."""
    validate(reference)
    return {"format": FORMAT, "rows": 0, "features": [
        {**_bins_of(f), "counts": [0] * len(f["counts"]), "missing": 0} for f in reference["features"]]}


def count_into(sketch: dict, columns: Mapping[str, Any]) -> dict:
    """A new sketch: `sketch` plus the counts of `columns` (extra columns are ignored)."""
    validate(sketch)
    rows, counts, missing = _count_columns(_binners(sketch), columns)
    return {**sketch, "rows": sketch["rows"] + rows, "features": [
        {**f, "counts": (np.asarray(f["counts"], dtype=np.int64) + c).tolist(), "missing": f["missing"] + int(m)}
        for f, c, m in zip(sketch["features"], counts, missing)]}


def _bins_of(feature: dict) -> dict:
    keys = ("name", "kind", "edges") if feature["kind"] == NUMERIC else ("name", "kind", "categories")
    return {k: feature[k] for k in keys}


# ---------------------------------------------------------------------------------------------------
# The live accumulator of a model server.

def _rfc3339(t: datetime | None = None) -> str:
    return (t or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")


class LiveSketch:
    """Cumulative counts of what a process observed, over the bins of `reference`. Thread-safe.

    Counting happens outside the lock; only the addition into the int64 arrays holds it, so many
    request threads can observe concurrently and a snapshot never sees half a batch.
    """

    def __init__(self, reference: dict) -> None:
        validate(reference)
        self._template = [_bins_of(f) for f in reference["features"]]
        self._binners = _binners(reference)
        self._counts = [np.zeros(b.nbins, dtype=np.int64) for b in self._binners]
        self._missing = np.zeros(len(self._binners), dtype=np.int64)
        self._rows = 0
        self._lock = threading.Lock()
        self.instance = uuid.uuid4().hex
        self.started = _rfc3339()

    @property
    def feature_names(self) -> list[str]:
        return [b.name for b in self._binners]

    @property
    def rows(self) -> int:
        """Rows counted so far."""
        with self._lock:
            return self._rows

    def observe_columns(self, columns: Mapping[str, Any]) -> None:
        """Count a batch given as name -> values (a mapping or DataFrame); extra columns are ignored."""
        rows, counts, missing = _count_columns(self._binners, columns)
        self._add(rows, counts, missing)

    def observe_rows(self, rows: Any) -> None:
        """Count a batch of rows (2-D, one value per feature in the reference's order)."""
        arr = rows if isinstance(rows, np.ndarray) else np.asarray(rows, dtype=object)
        if arr.ndim == 1 and arr.size == len(self._binners) and arr.size:
            arr = arr.reshape(1, -1)
        if arr.ndim != 2 or arr.shape[1] != len(self._binners):
            raise SketchError(f"rows must be 2-D with {len(self._binners)} values per row "
                              f"({self.feature_names[:20]}), got shape {arr.shape}")
        self.observe_columns({b.name: arr[:, j] for j, b in enumerate(self._binners)})

    def _add(self, rows: int, counts: list[np.ndarray], missing: np.ndarray) -> None:
        with self._lock:
            for total, c in zip(self._counts, counts):
                total += c
            self._missing += missing
            self._rows += rows

    def snapshot(self, **extra: Any) -> dict:
        """The cumulative sketch with `instance`, `started` and `extra` keys (e.g. modelVersion=3)."""
        reserved = {"format", "rows", "features"} & set(extra)
        if reserved:
            raise SketchError(f"snapshot keys {sorted(reserved)} are reserved for the sketch itself")
        with self._lock:
            counts = [c.tolist() for c in self._counts]
            missing = self._missing.tolist()
            rows = self._rows
        return {"format": FORMAT, "rows": rows,
                "features": [{**t, "counts": c, "missing": m} for t, c, m in zip(self._template, counts, missing)],
                "instance": self.instance, "started": self.started, **extra}


# ---------------------------------------------------------------------------------------------------
# Arithmetic on sketches.

def check_same_bins(a: dict, b: dict, what: str) -> None:
    names_a = [f["name"] for f in a["features"]]
    names_b = [f["name"] for f in b["features"]]
    if names_a != names_b:
        raise SketchError(f"cannot {what} sketches of different features: {names_a[:20]} vs {names_b[:20]}")
    for fa, fb in zip(a["features"], b["features"]):
        if _bins_of(fa) != _bins_of(fb):
            raise SketchError(f"cannot {what} sketches: feature {fa['name']!r} has different bins "
                              f"({fa['kind']} vs {fb['kind']}, or different edges/categories); "
                              "both must come from the same reference")


def merge(a: dict, b: dict) -> dict:
    """The sum of two sketches over the same bins (e.g. of two pods). Keys other than the counts are
    kept when both sketches agree on them, except the per-process `instance` and `started`."""
    validate(a)
    validate(b)
    check_same_bins(a, b, "merge")
    shared = {k: v for k, v in a.items() if k not in PROCESS_KEYS and k in b and b[k] == v}
    return {**shared, "format": FORMAT, "rows": a["rows"] + b["rows"], "features": [
        {**fa, "counts": [x + y for x, y in zip(fa["counts"], fb["counts"])], "missing": fa["missing"] + fb["missing"]}
        for fa, fb in zip(a["features"], b["features"])]}


def merge_all(sketches: Iterable[dict]) -> dict | None:
    """The sum of any number of sketches over the same bins; None when there are none."""
    total = None
    for s in sketches:
        total = s if total is None else merge(total, s)
    return None if total is None else validate(total)


def is_reset(current: dict, previous: dict | None) -> bool:
    """True when `current` does not continue `previous`: no previous, another process, or a count fell."""
    if previous is None or current.get("instance") != previous.get("instance"):
        return True
    check_same_bins(current, previous, "subtract")
    if current["rows"] < previous["rows"]:
        return True
    return any(fc["missing"] < fp["missing"] or any(x < y for x, y in zip(fc["counts"], fp["counts"]))
               for fc, fp in zip(current["features"], previous["features"]))


def window(current: dict, previous: dict | None) -> dict:
    """What one process counted between two cumulative snapshots: `current - previous`.

    On a counter reset (no previous snapshot, another `instance`, or any count decreased) the
    process restarted since `previous`, so everything it counted is new: `current` is the window.
    The window keeps `current`'s other keys (instance, modelVersion, ...).
    """
    validate(current)
    if previous is not None:
        validate(previous)
    if is_reset(current, previous):
        return current
    return {**current, "rows": current["rows"] - previous["rows"], "features": [
        {**fc, "counts": [x - y for x, y in zip(fc["counts"], fp["counts"])], "missing": fc["missing"] - fp["missing"]}
        for fc, fp in zip(current["features"], previous["features"])]}


# ---------------------------------------------------------------------------------------------------
# Validation.

def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _check_feature(i: int, f: Any, rows: int) -> str:
    if not isinstance(f, dict):
        raise SketchError(f"features[{i}] must be an object, got {type(f).__name__}")
    name = f.get("name")
    if not isinstance(name, str) or not name:
        raise SketchError(f"features[{i}].name must be a non-empty string, got {name!r}")
    where = f"feature {name!r}"
    kind = f.get("kind")
    if kind not in KINDS:
        raise SketchError(f"{where}: unknown kind {kind!r}; expected one of {list(KINDS)}")
    counts = f.get("counts")
    if not isinstance(counts, list) or not all(_is_count(c) for c in counts):
        raise SketchError(f"{where}: counts must be a list of non-negative integers, got {str(counts)[:200]}")
    if not _is_count(f.get("missing")):
        raise SketchError(f"{where}: missing must be a non-negative integer, got {f.get('missing')!r}")
    if kind == NUMERIC:
        edges = f.get("edges")
        if not isinstance(edges, list) or not all(
                isinstance(e, (int, float)) and not isinstance(e, bool) and np.isfinite(e) for e in edges):
            raise SketchError(f"{where}: edges must be a list of finite numbers, got {str(edges)[:200]}")
        if any(b <= a for a, b in zip(edges, edges[1:])):
            raise SketchError(f"{where}: edges must be strictly ascending, got {str(edges)[:200]}")
        if len(counts) != len(edges) + 1:
            raise SketchError(f"{where}: {len(edges)} edges need {len(edges) + 1} counts, got {len(counts)}")
    else:
        categories = f.get("categories")
        if not isinstance(categories, list) or not all(isinstance(c, str) for c in categories):
            raise SketchError(f"{where}: categories must be a list of strings, got {str(categories)[:200]}")
        if len(set(categories)) != len(categories):
            raise SketchError(f"{where}: categories must be unique, got {str(categories)[:200]}")
        if len(counts) != len(categories) + 1:
            raise SketchError(f"{where}: {len(categories)} categories need {len(categories) + 1} counts "
                              f"(the last is 'other'), got {len(counts)}")
    if sum(counts) + f["missing"] != rows:
        raise SketchError(f"{where}: counts ({sum(counts)}) plus missing ({f['missing']}) must equal rows ({rows})")
    return name


def validate(sketch: dict) -> dict:
    """`sketch` itself when it is a well-formed sketch (docs/contracts.md); SketchError otherwise."""
    if not isinstance(sketch, dict):
        raise SketchError(f"a sketch must be an object, got {type(sketch).__name__}")
    if sketch.get("format") != FORMAT:
        raise SketchError(f"sketch format must be {FORMAT!r}, got {sketch.get('format')!r}")
    rows = sketch.get("rows")
    if not _is_count(rows):
        raise SketchError(f"sketch rows must be a non-negative integer, got {rows!r}")
    features = sketch.get("features")
    if not isinstance(features, list):
        raise SketchError(f"sketch features must be a list, got {type(features).__name__}")
    names = [_check_feature(i, f, rows) for i, f in enumerate(features)]
    duplicates = sorted(n for n, k in Counter(names).items() if k > 1)
    if duplicates:
        raise SketchError(f"feature names must be unique, repeated: {duplicates}")
    return sketch
