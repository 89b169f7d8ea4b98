"""Drift decisions: which features drifted between a reference and a current window, and the dataset.

`detect` works on sketches (live traffic), `detect_raw` on raw values (a dataset URI) with exact
tests; both return a `DriftReport`. A feature drifts when its change is both significant (p-value of
KS for numeric, chi-squared for categorical features, adjusted across all features) and material
(the score of the configured test above its threshold), or when its share of missing values moved
the same way (Fisher's exact test, and Cohen's h of the two shares above its threshold). The defaults, and why, are in docs/drift.md; they live here only.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from . import stats
from .sketch import (
    CATEGORICAL, NUMERIC, SketchError, as_float, check_same_bins, is_categorical, build_reference, count_into,
    empty_like, validate,
)

NUMERICAL_TESTS = ("wasserstein", "ks", "psi", "jensenshannon")
CATEGORICAL_TESTS = ("jensenshannon", "chi2", "psi")
# Score above which a feature's change is material, per test (docs/drift.md, "Defaults").
DEFAULT_THRESHOLDS = {
    "wasserstein": 0.1,    # the reference's robust sigma: a shift of a tenth of a standard deviation
    "ks": 0.1,             # largest CDF gap of 10 percentage points
    "psi": 0.1,            # the usual "investigate" level of the population stability index
    "jensenshannon": 0.1,  # base-2 distance; about a 12-point swing between two equal categories
    "chi2": 0.1,           # Cramer's V; Cohen's "small effect"
}
DEFAULT_NUMERICAL_TEST = "wasserstein"
DEFAULT_CATEGORICAL_TEST = "jensenshannon"
DEFAULT_P_VALUE = 0.05
DEFAULT_CORRECTION = "fdr_bh"
DEFAULT_MIN_SAMPLES = 500  # = DriftMonitor spec.minSamples default
# Cohen's h of the change of the share of missing values, relative to the reference's share: 0% -> 0.25%,
# 5% -> 7.4% or 50% -> 55% (never less sensitive than the former absolute 0.05).
DEFAULT_MISSING_THRESHOLD = 0.1

UNCAPPED = 2**31 - 1  # max_categories of the exact categorical tests

OK = "ok"
INSUFFICIENT_SAMPLES = "insufficient_samples"


@dataclass(frozen=True)
class DriftConfig:
    """How features and the dataset are judged. Every field has the engine's default."""

    numerical_test: str = DEFAULT_NUMERICAL_TEST
    categorical_test: str = DEFAULT_CATEGORICAL_TEST
    # One score threshold for every feature instead of the test's default; per-feature ones win.
    score_threshold: float | None = None
    feature_thresholds: Mapping[str, float] = field(default_factory=dict)
    p_value: float = DEFAULT_P_VALUE  # significance level after correction
    correction: str = DEFAULT_CORRECTION  # fdr_bh | bonferroni | none
    # Share of drifted features at or above which the dataset drifts; None: any drifted feature.
    drift_share: float | None = None
    min_samples: int = DEFAULT_MIN_SAMPLES
    # Cohen's h of the missing share's change above which (with a significant Fisher test) a feature drifts.
    missing_threshold: float = DEFAULT_MISSING_THRESHOLD

    def __post_init__(self) -> None:
        if self.numerical_test not in NUMERICAL_TESTS:
            raise ValueError(f"numerical test {self.numerical_test!r} is not supported; use one of {list(NUMERICAL_TESTS)}")
        if self.categorical_test not in CATEGORICAL_TESTS:
            raise ValueError(f"categorical test {self.categorical_test!r} is not supported; "
                             f"use one of {list(CATEGORICAL_TESTS)}")
        if self.correction not in stats.CORRECTIONS:
            raise ValueError(f"correction {self.correction!r} is not supported; use one of {list(stats.CORRECTIONS)}")
        if not 0 < self.p_value < 1:
            raise ValueError(f"p_value must be in (0, 1), got {self.p_value}")
        if self.drift_share is not None and not 0 < self.drift_share <= 1:
            raise ValueError(f"drift_share must be in (0, 1] or None (any drifted feature), got {self.drift_share}")
        if self.min_samples < 1:
            raise ValueError(f"min_samples must be >= 1, got {self.min_samples}")
        if not 0 <= self.missing_threshold <= math.pi:
            raise ValueError(f"missing_threshold (Cohen's h) must be in [0, pi], got {self.missing_threshold}")

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | None) -> "DriftConfig":
        """The config of a DriftMonitor `spec` (camelCase keys as in the resource; absent = default)."""
        spec = spec or {}
        tests, thresholds = spec.get("tests") or {}, spec.get("thresholds") or {}
        given = {
            "numerical_test": tests.get("numerical"), "categorical_test": tests.get("categorical"),
            "score_threshold": thresholds.get("score"), "feature_thresholds": thresholds.get("features"),
            "p_value": thresholds.get("pValue"), "drift_share": thresholds.get("driftShare"),
            "missing_threshold": thresholds.get("missing"), "min_samples": spec.get("minSamples"),
        }
        return cls(**{k: v for k, v in given.items() if v is not None})

    def test_for(self, kind: str) -> str:
        return self.numerical_test if kind == NUMERIC else self.categorical_test

    def threshold_for(self, name: str, test: str) -> float:
        if name in self.feature_thresholds:
            return float(self.feature_thresholds[name])
        return float(self.score_threshold if self.score_threshold is not None else DEFAULT_THRESHOLDS[test])


@dataclass
class FeatureDrift:
    """The verdict on one feature. `p_value` is adjusted for multiple testing; None when not tested."""

    name: str
    kind: str
    test: str
    score: float | None
    threshold: float
    p_value: float | None
    drifted: bool
    statistic: str  # which significance test gave p_value: ks or chi2
    samples_reference: int  # non-missing values
    samples_current: int
    missing_reference: float  # share of missing values
    missing_current: float
    missing_p_value: float | None = None  # Fisher's exact test, adjusted; None when neither side has any
    missing_effect: float | None = None  # Cohen's h, positive when more values are missing now
    missing_drifted: bool = False


@dataclass
class DriftReport:
    status: str  # ok | insufficient_samples
    samples: int  # rows in the current window
    reference_samples: int
    features: list[FeatureDrift]
    drifted_features: int = 0
    drift_share: float = 0.0
    dataset_drift: bool | None = None  # None when nothing was decided
    rule: str = ""
    message: str = ""

    @property
    def drifted(self) -> list[str]:
        return [f.name for f in self.features if f.drifted]

    def to_dict(self) -> dict:
        """JSON-serialisable (NaN and infinities become None)."""
        return _json_safe(asdict(self))


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ---------------------------------------------------------------------------------------------------
# Per-feature measurements, before the decision.

@dataclass
class _Measured:
    name: str
    kind: str
    test: str
    score: float | None
    p_value: float  # raw
    n_ref: int
    n_cur: int
    missing_ref: int
    missing_cur: int


def _category_score(test: str, ref: np.ndarray, cur: np.ndarray) -> tuple[float, float]:
    """(score, chi-squared p-value) of categorical counts."""
    _, p_value, cramers_v = stats.chi2_test(ref, cur)
    if test == "chi2":
        return cramers_v, p_value
    return (stats.psi(ref, cur) if test == "psi" else stats.jensenshannon(ref, cur)), p_value


def _grouped_score(test: str, ref: np.ndarray, cur: np.ndarray) -> float:
    group = stats.group_bins(ref)
    r, c = stats.regroup(ref, group), stats.regroup(cur, group)
    return stats.psi(r, c) if test == "psi" else stats.jensenshannon(r, c)


def _measure_binned(ref_feature: dict, cur_feature: dict, test: str) -> tuple[float | None, float]:
    ref = np.asarray(ref_feature["counts"], dtype=np.int64)
    cur = np.asarray(cur_feature["counts"], dtype=np.int64)
    if ref.sum() == 0 or cur.sum() == 0:
        return None, 1.0
    if ref_feature["kind"] == CATEGORICAL:
        return _category_score(test, ref, cur)
    d, p_value = stats.ks_binned(ref, cur)
    if test == "ks":
        return d, p_value
    if test == "wasserstein":
        edges = np.asarray(ref_feature["edges"], dtype=np.float64)
        scale = stats.binned_scale(edges, ref)
        # Without a spread (a constant reference) distances have no unit: the KS gap says which share moved.
        return (stats.wasserstein_binned(edges, ref, cur) / scale if scale > 0 else d), p_value
    return _grouped_score(test, ref, cur), p_value


def _decide(measured: list[_Measured], rows_ref: int, rows_cur: int, config: DriftConfig) -> DriftReport:
    tested = [m for m in measured if m.score is not None]
    missing_tested = [m for m in measured if m.missing_ref or m.missing_cur]
    # One family: the distribution test of every feature with values on both sides, and the missing-share
    # test of every feature with missing values on either side.
    raw = [m.p_value for m in tested] + [
        stats.missing_rate_test(m.missing_ref, rows_ref, m.missing_cur, rows_cur) for m in missing_tested]
    adjusted = iter(stats.adjust_pvalues(np.array(raw), config.correction).tolist())
    p_of = {id(m): next(adjusted) for m in tested}
    missing_p_of = {id(m): next(adjusted) for m in missing_tested}

    features = []
    for m in measured:
        threshold = config.threshold_for(m.name, m.test)
        p_value = p_of.get(id(m))
        drifted = p_value is not None and p_value < config.p_value and m.score > threshold
        share_ref, share_cur = m.missing_ref / rows_ref if rows_ref else 0.0, m.missing_cur / rows_cur
        missing_p = missing_p_of.get(id(m))
        missing_effect = stats.cohens_h(share_ref, share_cur) if missing_p is not None else None
        missing_drifted = (missing_p is not None and missing_p < config.p_value
                           and abs(missing_effect) > config.missing_threshold)
        features.append(FeatureDrift(
            name=m.name, kind=m.kind, test=m.test, score=m.score, threshold=threshold, p_value=p_value,
            drifted=drifted or missing_drifted, statistic="ks" if m.kind == NUMERIC else "chi2",
            samples_reference=m.n_ref, samples_current=m.n_cur, missing_reference=share_ref,
            missing_current=share_cur, missing_p_value=missing_p, missing_effect=missing_effect,
            missing_drifted=missing_drifted))
    drifted = sum(f.drifted for f in features)
    share = drifted / len(features) if features else 0.0
    if config.drift_share is None:
        dataset_drift, rule = drifted > 0, f"any drifted feature ({config.correction} at p < {config.p_value})"
    else:
        dataset_drift, rule = share >= config.drift_share, f"drifted share >= {config.drift_share}"
    return DriftReport(status=OK, samples=rows_cur, reference_samples=rows_ref, features=features,
                       drifted_features=drifted, drift_share=share, dataset_drift=dataset_drift, rule=rule,
                       message=f"{drifted} of {len(features)} features drifted")


def _insufficient(rows_ref: int, rows_cur: int, config: DriftConfig) -> DriftReport | None:
    if rows_cur >= config.min_samples and rows_ref > 0:
        return None
    side = "reference" if rows_ref == 0 else "current window"
    return DriftReport(status=INSUFFICIENT_SAMPLES, samples=rows_cur, reference_samples=rows_ref, features=[],
                       message=f"{side} has too few rows ({rows_ref if rows_ref == 0 else rows_cur}); "
                               f"at least {config.min_samples} are needed to decide")


# ---------------------------------------------------------------------------------------------------
# Public entry points.

def detect(reference: dict, current: dict, config: DriftConfig | None = None) -> DriftReport:
    """Drift of the `current` sketch (a window) against the `reference` sketch over the same bins."""
    config = config or DriftConfig()
    validate(reference)
    validate(current)
    check_same_bins(reference, current, "compare")
    rows_ref, rows_cur = reference["rows"], current["rows"]
    short = _insufficient(rows_ref, rows_cur, config)
    if short:
        return short
    measured = []
    for rf, cf in zip(reference["features"], current["features"]):
        test = config.test_for(rf["kind"])
        score, p_value = _measure_binned(rf, cf, test)
        measured.append(_Measured(rf["name"], rf["kind"], test, score, p_value, sum(rf["counts"]), sum(cf["counts"]),
                                  rf["missing"], cf["missing"]))
    return _decide(measured, rows_ref, rows_cur, config)


def _measure_raw_numeric(name: str, ref_values: Any, cur_values: Any, test: str) -> _Measured:
    x, y = as_float(ref_values).ravel(), as_float(cur_values).ravel()
    x_ok, y_ok = np.isfinite(x), np.isfinite(y)
    x, y = (x if x_ok.all() else x[x_ok]), (y if y_ok.all() else y[y_ok])
    missing_ref, missing_cur = int(x_ok.size - x.size), int(y_ok.size - y.size)
    score = None
    p_value = 1.0
    if x.size and y.size:
        d, p_value, w = stats.ks_wasserstein_exact(x, y)
        if test == "ks":
            score = d
        elif test == "wasserstein":
            scale = stats.values_scale(x)
            score = w / scale if scale > 0 else d
        else:
            edges = stats.decile_edges(x)
            r, c = stats.counts_over(edges, x), stats.counts_over(edges, y)
            score = stats.psi(r, c) if test == "psi" else stats.jensenshannon(r, c)
    return _Measured(name, NUMERIC, test, score, p_value, int(x.size), int(y.size), missing_ref, missing_cur)


def _measure_raw_categorical(name: str, ref_values: Any, cur_values: Any, test: str) -> _Measured:
    # Counting over every reference category (no cap, unseen ones as "other") is exact.
    reference = build_reference({name: ref_values}, categorical=[name], max_categories=UNCAPPED)
    current = count_into(empty_like(reference), {name: cur_values})
    (rf,), (cf,) = reference["features"], current["features"]
    score, p_value = _measure_binned(rf, cf, test)
    return _Measured(name, CATEGORICAL, test, score, p_value, sum(rf["counts"]), sum(cf["counts"]), rf["missing"],
                     cf["missing"])


def detect_raw(reference_frame: Mapping[str, Any], current_frame: Mapping[str, Any], categorical: Iterable[str] = (),
               config: DriftConfig | None = None) -> DriftReport:
    """Drift of raw values (mappings or DataFrames of columns) with exact tests: KS and Wasserstein on
    sorted values for numeric columns, chi-squared over every reference category for categorical ones.

    The features are the reference's columns, in order; numeric non-finite values count as missing.
    """
    config = config or DriftConfig()
    ref_cols = {str(k): v for k, v in reference_frame.items()}
    cur_cols = {str(k): v for k, v in current_frame.items()}
    absent = [name for name in ref_cols if name not in cur_cols]
    if absent:
        raise SketchError(f"columns {absent} of the reference are not in the current data")
    rows_ref = len(next(iter(ref_cols.values()))) if ref_cols else 0
    rows_cur = len(next(iter(cur_cols.values()))) if cur_cols else 0
    short = _insufficient(rows_ref, rows_cur, config)
    if short:
        return short
    categorical = set(categorical)
    measured = [
        _measure_raw_categorical(name, values, cur_cols[name], config.categorical_test)
        if name in categorical or is_categorical(values)
        else _measure_raw_numeric(name, values, cur_cols[name], config.numerical_test)
        for name, values in ref_cols.items()
    ]
    return _decide(measured, rows_ref, rows_cur, config)

