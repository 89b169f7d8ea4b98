"""The DriftMonitor's decision on live performance: a significant drop below hold-out, with enough labels."""
from __future__ import annotations

from modelloop.api.drift import PerformanceSpec
from modelloop.performance import assess, deciding_metric


def live(version: int, labelled: int, value: float, low: float, high: float, metric: str = "accuracy") -> dict:
    return {str(version): {"labelled": labelled, "metrics": {metric: {"value": value, "low": low, "high": high}}}}


SPEC = PerformanceSpec(max_drop=0.05, min_labels=200)


def test_a_drop_whose_whole_interval_is_below_the_tolerance_is_significant():
    verdict = assess(SPEC, live(3, 800, 0.62, 0.58, 0.66), 3, {"accuracy": 0.80}, "accuracy")
    assert verdict.decided and verdict.dropped
    assert "significantly below" in verdict.message and "800 labels" in verdict.message
    assert verdict.entries[0] | {} == {"version": 3, "metric": "accuracy", "labelled": 800, "source": "live",
                                       "holdout": 0.8, "value": 0.62, "low": 0.58, "high": 0.66, "dropped": True,
                                       "display": "v3 accuracy 0.62 (hold-out 0.8), 800 labels"}


def test_an_interval_that_reaches_the_tolerance_is_no_drop():
    """0.74 is below hold-out 0.80 minus 0.05, but 0.77 is plausible: nothing is decided against the model."""
    verdict = assess(SPEC, live(3, 300, 0.70, 0.64, 0.77), 3, {"accuracy": 0.80}, "accuracy")
    assert verdict.decided and not verdict.dropped and "no significant drop" in verdict.message


def test_too_few_labels_decide_nothing():
    verdict = assess(SPEC, live(3, 120, 0.30, 0.20, 0.40), 3, {"accuracy": 0.80}, "accuracy")
    assert not verdict.decided and not verdict.dropped
    assert "120 of 200 labelled predictions of version 3" in verdict.message


def test_for_errors_lower_is_better():
    worse = assess(SPEC.model_copy(update={"max_drop": 1.0}), live(2, 500, 9.0, 8.5, 9.5, "rmse"), 2,
                   {"rmse": 6.0}, "rmse")
    same = assess(SPEC.model_copy(update={"max_drop": 1.0}), live(2, 500, 6.5, 6.0, 7.1, "rmse"), 2,
                  {"rmse": 6.0}, "rmse")
    assert worse.dropped and not same.dropped


def test_the_served_version_comes_first_and_others_are_reported():
    both = {**live(2, 900, 0.6, 0.57, 0.63), **live(3, 50, 0.8, 0.7, 0.9)}
    verdict = assess(SPEC, both, 3, {"accuracy": 0.8}, "accuracy")
    assert [e["version"] for e in verdict.entries] == [3, 2]
    assert not verdict.decided  # version 3 has 50 labels; version 2's drop is history, not a verdict


def test_the_deciding_metric_follows_the_training_when_it_can_be_measured_live():
    assert deciding_metric(PerformanceSpec(), "roc_auc", True) == "roc_auc"
    assert deciding_metric(PerformanceSpec(), "log_loss", True) == "accuracy"
    assert deciding_metric(PerformanceSpec(), None, False) == "rmse"
    assert deciding_metric(PerformanceSpec(metric="f1"), "roc_auc", True) == "f1"


def test_without_enough_labels_the_label_free_estimate_decides():
    found = live(3, 20, 0.9, 0.7, 0.99)
    found["3"]["estimated"] = {"rows": 5000, "metrics": {"accuracy": {"value": 0.6, "low": 0.59, "high": 0.61}}}
    verdict = assess(SPEC, found, 3, {"accuracy": 0.8}, "accuracy")
    assert verdict.decided and verdict.dropped and verdict.message.startswith("estimated (no labels")
    assert [(e["source"], e["labelled"]) for e in verdict.entries] == [("live", 20), ("estimated", 5000)]
    assert verdict.entries[1]["display"] == "v3 accuracy 0.6 (hold-out 0.8), 5000 rows, estimated"


def test_enough_labels_overrule_the_estimate():
    """Concept drift fools the estimate (confidence unchanged); the labels say what happened."""
    found = live(3, 900, 0.55, 0.52, 0.58)
    found["3"]["estimated"] = {"rows": 5000, "metrics": {"accuracy": {"value": 0.79, "low": 0.78, "high": 0.80}}}
    verdict = assess(SPEC, found, 3, {"accuracy": 0.8}, "accuracy")
    assert verdict.dropped and verdict.message.startswith("live accuracy")
    assert verdict.entries[1]["dropped"] is False  # the estimate, shown beside, holds


def test_only_the_served_version_is_compared_with_the_hold_out_it_has():
    verdict = assess(SPEC, {**live(2, 900, 0.51, 0.49, 0.53), **live(3, 900, 0.91, 0.9, 0.92)}, 3,
                     {"accuracy": 0.91}, "accuracy")
    assert verdict.entries[1]["version"] == 2 and "holdout" not in verdict.entries[1]
    assert "dropped" not in verdict.entries[1]
