"""Confidence-based performance estimation (modelloop.outcomes.cbpe): the calibration document, its checks, the
estimate, and the property that matters: without labels, within 3 accuracy points of the truth under covariate
shift, and fooled by concept drift (bench/cbpe/run.py is the full evaluation)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bench.cbpe.run import FAST, evaluate
from modelloop.artifacts import InvalidMetadataError
from modelloop.artifacts.metadata import validate_metadata
from modelloop.outcomes import cbpe
from modelloop.outcomes.cbpe import (
    MAX_POINTS, calibrate, estimate_accuracy, expected_calibration_error, fit_calibration, validate_calibration,
)

SKETCH = {"format": "modelloop.sketch/v1", "rows": 0, "features": []}


def overconfident(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Confidence in [0.5, 1] whose true P(correct) is lower: (confidence, correct, true probability)."""
    rng = np.random.default_rng(seed)
    confidence = rng.uniform(0.5, 1.0, rows)
    truth = 0.5 + 0.5 * (2 * confidence - 1) ** 2  # 0.5 at 0.5, 1 at 1, below the diagonal between
    return confidence, (rng.random(rows) < truth).astype(int), truth


def metadata(calibration: object) -> dict:
    return {
        "version": 1, "created": "2026-11-27T08:00:00Z",
        "model": {"file": "model.skops", "format": "skops", "sha256": "0" * 64, "size": 1},
        "training": {}, "dataset": {"uri": "file:///d.csv", "format": "csv", "sha256": "0" * 64, "rows": 10},
        "estimator": {"class": "sklearn.linear_model.LogisticRegression"}, "task": "classification",
        "libraries": {}, "metric": {"name": "accuracy", "value": 0.9}, "metrics": {"accuracy": 0.9},
        "schema": {"features": [{"name": "x", "dtype": "float64", "categorical": False}],
                   "target": {"name": "y", "dtype": "int64", "classes": [0, 1]}},
        "reference": SKETCH, "predictionReference": SKETCH, "calibration": calibration,
    }


def test_an_overconfident_model_is_calibrated_and_the_map_survives_json_and_validation():
    confidence, correct, truth = overconfident(4000, seed=1)
    doc = fit_calibration(confidence, correct)

    assert doc["method"] == "isotonic" and doc["rows"] == 4000
    assert doc["eceAfter"] < doc["eceBefore"] and doc["eceAfter"] == doc["eceIsotonic"]
    assert 1 <= len(doc["x"]) == len(doc["y"]) <= MAX_POINTS
    read = validate_calibration(json.loads(json.dumps(doc)))
    assert read == doc
    fresh_confidence, _, fresh_truth = overconfident(20_000, seed=2)
    calibrated = calibrate(read, fresh_confidence)
    assert np.all((calibrated >= 0) & (calibrated <= 1))
    assert np.all(np.diff(calibrated[np.argsort(fresh_confidence)]) >= 0)  # monotone in the confidence
    assert abs(calibrated.mean() - fresh_truth.mean()) < 0.02 < 0.08 < abs(fresh_confidence.mean() - fresh_truth.mean())
    assert calibrate(read, np.array([np.nan, -1.0, 2.0]))[1:].tolist() == [read["y"][0], read["y"][-1]]
    assert math.isnan(calibrate(read, np.array([np.nan]))[0])

    document = validate_metadata(metadata(doc)).wire()  # the metadata.json field
    assert document["calibration"] == doc


def test_the_shipped_map_is_sklearns_isotonic_fit_on_every_row():
    from sklearn.isotonic import IsotonicRegression

    confidence, correct, _ = overconfident(3000, seed=3)
    doc = fit_calibration(confidence, correct)
    fitted = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(confidence, correct)
    probe = np.linspace(0.0, 1.0, 501)
    np.testing.assert_allclose(calibrate(doc, probe), fitted.predict(probe), atol=1e-6)


def test_a_calibrated_model_keeps_the_identity():
    for seed in range(3):
        rng = np.random.default_rng(10 + seed)
        confidence = rng.uniform(0.5, 1.0, 3000)
        correct = rng.random(3000) < confidence  # calibrated by construction
        doc = fit_calibration(confidence, correct)
        assert doc["method"] == "identity", doc  # in-sample isotonic would always win; cross-fitted it does not
        assert doc["x"] == doc["y"] == [] and doc["eceAfter"] == doc["eceBefore"] < doc["eceIsotonic"]
        assert validate_calibration(doc) == doc
        np.testing.assert_array_equal(calibrate(doc, confidence), confidence)


def test_a_hold_out_too_small_to_judge_a_fit_keeps_the_identity():
    confidence, correct, _ = overconfident(cbpe.MIN_ROWS - 1, seed=4)
    doc = fit_calibration(confidence, correct)
    assert doc["method"] == "identity" and doc["eceIsotonic"] is None and doc["rows"] == cbpe.MIN_ROWS - 1


def test_more_thresholds_than_allowed_are_thinned_keeping_both_ends_and_monotony():
    x = np.linspace(0.5, 1.0, 5000)
    y = np.sort(np.random.default_rng(5).uniform(0, 1, 5000))
    kept_x, kept_y = cbpe._downsample(x, y)
    assert len(kept_x) == len(kept_y) <= MAX_POINTS
    assert (kept_x[0], kept_x[-1], kept_y[0], kept_y[-1]) == (x[0], x[-1], y[0], y[-1])
    assert np.all(np.diff(kept_x) > 0) and np.all(np.diff(kept_y) >= 0)
    doc = {"method": "isotonic", "x": kept_x.tolist(), "y": kept_y.tolist(), "eceBefore": 0.1, "eceAfter": 0.05,
           "rows": 5000}
    assert validate_calibration(doc)["x"] == kept_x.tolist()


def test_the_estimate_is_the_mean_with_the_bernoulli_interval():
    estimate = estimate_accuracy(np.full(100, 0.5))
    half = 1.959963984540054 * math.sqrt(100 * 0.25) / 100
    assert estimate == pytest.approx({"value": 0.5, "low": 0.5 - half, "high": 0.5 + half, "rows": 100})
    assert estimate_accuracy(np.array([1.0, 1.0, np.nan])) == {"value": 1.0, "low": 1.0, "high": 1.0, "rows": 2}
    assert estimate_accuracy(np.array([np.nan])) == {"value": None, "low": None, "high": None, "rows": 0}


def test_ece_is_zero_for_perfect_calibration_and_the_gap_otherwise():
    confidence = np.repeat([0.6, 0.9], 10)
    correct = np.array([1] * 6 + [0] * 4 + [1] * 9 + [0])
    assert expected_calibration_error(confidence, correct, bins=2) == pytest.approx(0.0)
    assert expected_calibration_error(np.full(10, 0.9), np.zeros(10)) == pytest.approx(0.9)


GOOD = {"method": "isotonic", "x": [0.5, 0.7, 1.0], "y": [0.4, 0.6, 0.95], "eceBefore": 0.08, "eceAfter": 0.02,
        "eceIsotonic": 0.02, "rows": 500}


@pytest.mark.parametrize("change, problem", [
    ({"method": "platt"}, "calibration.method"),
    ({"method": None}, "calibration.method"),
    ({"x": "0.5,0.7"}, "calibration.x must be a list"),
    ({"x": [0.5, float("nan"), 1.0]}, "calibration.x[1]"),
    ({"y": [0.4, float("inf"), 0.95]}, "calibration.y[1]"),
    ({"x": [0.5, True, 1.0]}, "calibration.x[1]"),
    ({"y": [0.4, "0.6", 0.95]}, "calibration.y[1]"),
    ({"y": [0.4, 0.6, 1.5]}, "calibration.y[2]"),
    ({"x": [-0.1, 0.7, 1.0]}, "calibration.x[0]"),
    ({"x": [0.5, 0.9, 0.7]}, "calibration.x must be non-decreasing"),
    ({"y": [0.6, 0.4, 0.95]}, "calibration.y must be non-decreasing"),
    ({"y": [0.4, 0.6]}, "calibration.x has 3 points, calibration.y 2"),
    ({"x": [0.5] * (MAX_POINTS + 1), "y": [0.5] * (MAX_POINTS + 1)}, "at most 1000"),
    ({"x": [], "y": []}, "needs at least one point"),
    ({"method": "identity"}, "an identity calibration has no points"),
    ({"rows": -1}, "calibration.rows"),
    ({"rows": True}, "calibration.rows"),
    ({"rows": 1.5}, "calibration.rows"),
    ({"eceBefore": None}, "calibration.eceBefore"),
    ({"eceAfter": float("nan")}, "calibration.eceAfter"),
    ({"eceIsotonic": 2.0}, "calibration.eceIsotonic"),
])
def test_a_bad_calibration_document_is_refused_naming_the_problem(change, problem):
    doc = {**GOOD, **change}
    with pytest.raises(ValueError) as raised:
        validate_calibration(doc)
    assert problem in str(raised.value)
    with pytest.raises(InvalidMetadataError, match="calibration"):  # and so is a metadata.json carrying it
        validate_metadata(metadata(doc))


def test_validation_keeps_known_keys_only_and_refuses_what_is_not_an_object():
    assert validate_calibration({**GOOD, "future": [1, 2]}) == GOOD
    with pytest.raises(ValueError, match="must be an object"):
        validate_calibration([GOOD])
    assert "calibration" not in validate_metadata({k: v for k, v in metadata(GOOD).items()
                                                   if k != "calibration"}).wire()


def test_without_labels_the_estimate_is_within_3_points_under_covariate_shift_and_fooled_by_concept_drift():
    """Real models (random forest, one-hot logistic regression) on the churn generator and make_classification;
    covariate shift by x-only importance resampling of a pool from the same generator (P(y|x) unchanged);
    concept drift by churn's concept=True and relabelled half-space. bench/cbpe/run.py has the full table."""
    rows = evaluate(FAST, seed=0)
    covariate = [r for r in rows if r["kind"] == "covariate"]
    concept = [r for r in rows if r["kind"] == "concept"]
    assert len(covariate) == 8 and len(concept) == 3

    for r in covariate:
        assert r["abs_error_points"] <= 3.0, r
    # the shifts moved the accuracy, and the estimate followed it better than the hold-out accuracy would
    moved = [r for r in covariate if abs(r["true_accuracy"] - r["holdout_accuracy"]) > 0.03]
    assert len(moved) >= 4
    for r in moved:
        assert abs(r["estimated_accuracy"] - r["true_accuracy"]) < abs(r["holdout_accuracy"] - r["true_accuracy"])
    for r in concept:  # P(y|x) changed: the confidence cannot know, and the estimate stays where it was
        assert r["abs_error_points"] > 10.0, r
        assert r["true_accuracy"] < r["low"]
