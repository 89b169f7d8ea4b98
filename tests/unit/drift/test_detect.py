"""Drift decisions: defaults that neither explode with sample size nor hide a handful of drifted features."""
from __future__ import annotations

import json

import numpy as np
import pytest

from modelloop.drift import DriftConfig, SketchError, build_reference, count_into, detect, detect_raw, empty_like
from modelloop.drift.detect import CATEGORICAL_TESTS, DEFAULT_THRESHOLDS, INSUFFICIENT_SAMPLES, NUMERICAL_TESTS

LABELS = np.array([f"c{i}" for i in range(10)], dtype=object)
P_REFERENCE = np.array([0.25, 0.18, 0.13, 0.10, 0.08, 0.07, 0.06, 0.05, 0.04, 0.04])
P_CHANGED = np.array([0.15, 0.15, 0.13, 0.10, 0.08, 0.07, 0.06, 0.08, 0.09, 0.09])


def frame(rng: np.random.Generator, rows: int, shifted: int = 0, changed: int = 0, shift: float = 0.3,
          numeric: int = 20, categorical: int = 5) -> dict:
    columns = {f"num_{i}": rng.standard_normal(rows) + (shift if i < shifted else 0.0) for i in range(numeric)}
    for i in range(categorical):
        columns[f"cat_{i}"] = LABELS[rng.choice(10, rows, p=P_CHANGED if i < changed else P_REFERENCE)]
    return columns


def sketches(reference: dict, current: dict) -> tuple[dict, dict]:
    ref = build_reference(reference)
    return ref, count_into(empty_like(ref), current)


@pytest.fixture(scope="module")
def six_of_25() -> tuple[dict, dict]:
    rng = np.random.default_rng(21)
    return frame(rng, 100_000), frame(rng, 100_000, shifted=5, changed=1)


EXPECTED = ["num_0", "num_1", "num_2", "num_3", "num_4", "cat_0"]


def test_defaults_flag_exactly_the_six_changed_columns_and_the_dataset(six_of_25):
    report = detect(*sketches(*six_of_25))
    assert report.drifted == EXPECTED
    assert report.dataset_drift is True and report.drift_share == pytest.approx(6 / 25)
    assert report.status == "ok" and report.samples == 100_000


def test_raw_values_flag_the_same_six_columns(six_of_25):
    report = detect_raw(*six_of_25, categorical=[f"cat_{i}" for i in range(5)])
    assert report.drifted == EXPECTED and report.dataset_drift is True


def test_a_share_rule_like_evidentlys_half_would_hide_six_of_25(six_of_25):
    report = detect(*sketches(*six_of_25), DriftConfig(drift_share=0.5))
    assert report.drifted == EXPECTED and report.dataset_drift is False


@pytest.mark.parametrize("rows", [2_000, 400_000])
def test_no_drift_raises_no_alarm_at_small_or_large_samples(rows):
    rng = np.random.default_rng(rows)
    report = detect(*sketches(frame(rng, rows, numeric=10, categorical=3), frame(rng, rows, numeric=10, categorical=3)))
    assert report.drifted == [] and report.dataset_drift is False


def test_a_significant_but_immaterial_shift_at_large_samples_is_not_drift():
    rng = np.random.default_rng(22)
    ref, cur = sketches(frame(rng, 400_000, numeric=1, categorical=0),
                        frame(rng, 400_000, shifted=1, shift=0.03, numeric=1, categorical=0))
    (feature,) = detect(ref, cur).features
    assert feature.p_value < 1e-6  # a raw p-value would call this drift...
    assert feature.score < DEFAULT_THRESHOLDS["wasserstein"] and not feature.drifted  # ...the effect size does not


@pytest.mark.parametrize("test", NUMERICAL_TESTS)
def test_every_numerical_test_flags_a_half_sigma_shift_only(test):
    rng = np.random.default_rng(23)
    ref, cur = sketches(frame(rng, 20_000, numeric=2, categorical=0),
                        frame(rng, 20_000, shifted=1, shift=0.5, numeric=2, categorical=0))
    report = detect(ref, cur, DriftConfig(numerical_test=test))
    assert report.drifted == ["num_0"] and report.features[0].test == test


@pytest.mark.parametrize("test", CATEGORICAL_TESTS)
def test_every_categorical_test_flags_changed_frequencies_only(test):
    rng = np.random.default_rng(24)
    ref, cur = sketches(frame(rng, 20_000, numeric=0, categorical=2), frame(rng, 20_000, changed=1, numeric=0,
                                                                           categorical=2))
    report = detect(ref, cur, DriftConfig(categorical_test=test))
    assert report.drifted == ["cat_0"] and report.features[0].statistic == "chi2"


def test_an_empty_window_decides_nothing():
    ref = build_reference({"x": np.arange(1000.0)})
    report = detect(ref, empty_like(ref))
    assert report.status == INSUFFICIENT_SAMPLES and report.dataset_drift is None and report.features == []
    assert "too few rows (0)" in report.message


def test_fewer_rows_than_min_samples_decide_nothing():
    ref = build_reference({"x": np.arange(1000.0)})
    window = count_into(empty_like(ref), {"x": np.full(499, 1e6)})
    assert detect(ref, window).status == INSUFFICIENT_SAMPLES
    assert detect(ref, window, DriftConfig(min_samples=100)).drifted == ["x"]


def test_a_jump_in_missing_values_is_drift_even_when_the_values_are_alike():
    rng = np.random.default_rng(25)
    ref = build_reference({"x": rng.standard_normal(10_000), "k": LABELS[rng.integers(0, 3, 10_000)]})
    x = rng.standard_normal(5_000)
    x[:1_000] = np.nan
    report = detect(ref, count_into(empty_like(ref), {"x": x, "k": LABELS[rng.integers(0, 3, 5_000)]}))
    (fx, fk) = report.features
    assert fx.drifted and fx.missing_drifted and fx.missing_current == pytest.approx(0.2) and fx.score < 0.1
    assert not fk.drifted and fk.missing_p_value is None


def _with_missing(rng: np.random.Generator, rows: int, missing: int) -> np.ndarray:
    x = rng.standard_normal(rows)
    x[rng.choice(rows, missing, replace=False)] = np.nan
    return x


# (missing in the reference, its rows, missing in the window, its rows, drift?): docs/drift.md, "Missing values".
MISSING_CASES = [
    pytest.param(0, 100_000, 4_900, 100_000, True, id="0%->4.9%-at-100k"),  # the absolute 0.05 missed this
    pytest.param(5_000, 100_000, 0, 100_000, True, id="5%->0%-at-100k"),
    pytest.param(5_000, 100_000, 5_100, 100_000, False, id="5.0%->5.1%-at-100k"),
    pytest.param(50_000, 1_000_000, 51_000, 1_000_000, False, id="5.0%->5.1%-at-1M"),  # significant, immaterial
    pytest.param(50_000, 100_000, 54_000, 100_000, False, id="50%->54%-at-100k"),
    pytest.param(50_000, 100_000, 56_000, 100_000, True, id="50%->56%-at-100k"),
    pytest.param(0, 500, 4, 500, False, id="0->4-of-500"),  # material, but too few to tell
    pytest.param(0, 500, 9, 500, True, id="0->9-of-500"),
    pytest.param(0, 20, 3, 20, False, id="0->3-of-20"),
]


@pytest.mark.parametrize("missing_ref, rows_ref, missing_cur, rows_cur, drift", MISSING_CASES)
def test_a_change_of_the_missing_share_counts_relative_to_the_references(missing_ref, rows_ref, missing_cur,
                                                                         rows_cur, drift):
    rng = np.random.default_rng(rows_ref + missing_cur)
    ref = build_reference({"x": _with_missing(rng, rows_ref, missing_ref)})
    cur = count_into(empty_like(ref), {"x": _with_missing(rng, rows_cur, missing_cur)})
    (f,) = detect(ref, cur, DriftConfig(min_samples=1)).features
    assert f.missing_drifted is drift and f.drifted is drift
    share_ref, share_cur = missing_ref / rows_ref, missing_cur / rows_cur
    h = 2 * (np.arcsin(np.sqrt(share_cur)) - np.arcsin(np.sqrt(share_ref)))
    assert f.missing_effect == pytest.approx(h) and (f.missing_reference, f.missing_current) == (share_ref, share_cur)


def test_raw_values_judge_the_missing_share_alike():
    rng = np.random.default_rng(26)
    ref, cur = {"x": _with_missing(rng, 100_000, 0)}, {"x": _with_missing(rng, 100_000, 4_900)}
    (f,) = detect_raw(ref, cur).features
    assert f.missing_drifted and f.missing_p_value < 1e-100 and f.missing_effect == pytest.approx(0.4464, abs=1e-4)


def test_the_missing_threshold_is_cohens_h_and_can_be_set_in_the_spec():
    rng = np.random.default_rng(27)
    ref = build_reference({"x": _with_missing(rng, 100_000, 0)})
    cur = count_into(empty_like(ref), {"x": _with_missing(rng, 100_000, 4_900)})  # h = 0.446
    assert detect(ref, cur, DriftConfig.from_spec({"thresholds": {"missing": 0.4}})).drifted == ["x"]
    assert detect(ref, cur, DriftConfig.from_spec({"thresholds": {"missing": 0.5}})).drifted == []
    assert detect(ref, cur, DriftConfig(missing_threshold=np.pi)).drifted == []  # pi: the check is off


def test_a_feature_missing_entirely_in_the_window_has_no_score_but_drifts():
    ref = build_reference({"x": np.arange(1000.0), "y": np.arange(1000.0)})
    report = detect(ref, count_into(empty_like(ref), {"x": [np.nan] * 600, "y": np.arange(600.0)}))
    fx = report.features[0]
    assert fx.score is None and fx.p_value is None and fx.drifted and fx.missing_drifted


def test_a_constant_reference_scores_the_share_that_moved():
    ref = build_reference({"c": np.zeros(1000)})
    report = detect(ref, count_into(empty_like(ref), {"c": np.r_[np.zeros(600), np.ones(400)]}))
    assert report.features[0].score == pytest.approx(0.0) and not report.drifted  # values >= 0: same bin
    report = detect(ref, count_into(empty_like(ref), {"c": np.r_[np.zeros(600), -np.ones(400)]}))
    assert report.features[0].score == pytest.approx(0.4) and report.drifted == ["c"]


def test_per_feature_thresholds_override_the_tests_default(six_of_25):
    config = DriftConfig(feature_thresholds={"num_0": 0.5, "cat_0": 0.5})
    report = detect(*sketches(*six_of_25), config)
    assert report.drifted == EXPECTED[1:5]
    assert report.features[0].threshold == 0.5 and report.features[1].threshold == DEFAULT_THRESHOLDS["wasserstein"]


def test_bonferroni_is_available_and_stricter_than_benjamini_hochberg(six_of_25):
    ref, cur = sketches(*six_of_25)
    bh, bonferroni = detect(ref, cur), detect(ref, cur, DriftConfig(correction="bonferroni"))
    assert all(b.p_value >= h.p_value for b, h in zip(bonferroni.features, bh.features))
    assert bonferroni.drifted == EXPECTED


def test_config_from_a_drift_monitor_spec():
    config = DriftConfig.from_spec({"minSamples": 100, "tests": {"numerical": "ks"},
                                    "thresholds": {"score": 0.2, "pValue": 0.01, "driftShare": 0.3,
                                                   "missing": 0.3, "features": {"age": 0.05}}})
    assert (config.numerical_test, config.categorical_test, config.min_samples) == ("ks", "jensenshannon", 100)
    assert config.threshold_for("age", "ks") == 0.05 and config.threshold_for("other", "chi2") == 0.2
    assert (config.p_value, config.drift_share, config.missing_threshold) == (0.01, 0.3, 0.3)
    assert DriftConfig.from_spec(None) == DriftConfig()


@pytest.mark.parametrize("change, message", [
    ({"numerical_test": "chi2"}, "numerical test 'chi2'"), ({"categorical_test": "ks"}, "categorical test 'ks'"),
    ({"correction": "holm"}, "correction 'holm'"), ({"p_value": 1.5}, "p_value"), ({"drift_share": 0}, "drift_share"),
    ({"missing_threshold": -0.1}, "missing_threshold"), ({"missing_threshold": 4.0}, "missing_threshold"),
])
def test_invalid_config_is_rejected_with_the_field(change, message):
    with pytest.raises(ValueError, match=message):
        DriftConfig(**change)


def test_report_is_json_serialisable(six_of_25):
    report = detect(*sketches(*six_of_25)).to_dict()
    text = json.dumps(report, allow_nan=False)
    feature = json.loads(text)["features"][0]
    assert {"name", "kind", "test", "score", "threshold", "p_value", "drifted", "missing_p_value", "missing_effect",
            "missing_drifted"} <= set(feature)
    assert json.loads(text)["dataset_drift"] is True


def test_reference_and_window_of_different_bins_are_rejected():
    ref = build_reference({"x": np.arange(100.0)})
    other = build_reference({"x": np.arange(50.0)})
    with pytest.raises(SketchError, match="'x'"):
        detect(ref, other)
