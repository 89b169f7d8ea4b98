"""Promotion decisions: pure function of the policy, the candidate and the serving version."""
from modelloop.api.deployment import PromotionSpec
from modelloop.promotion import should_promote


def acc(v):
    return {"name": "accuracy", "value": v}


def rmse(v):
    return {"name": "rmse", "value": v}


def test_first_version_meeting_min_metric_is_promoted():
    d = should_promote(PromotionSpec(min_metric=0.8), 1, acc(0.9), None, None)
    assert d.promote and d.reason == "Promoted"


def test_version_below_min_metric_is_held_with_the_numbers_in_the_reason():
    d = should_promote(PromotionSpec(min_metric=0.8), 2, acc(0.7), 1, acc(0.85))
    assert not d.promote and d.reason == "BelowMinMetric"
    assert "0.7" in d.message and "0.8" in d.message


def test_regression_beyond_max_regression_is_held():
    d = should_promote(PromotionSpec(max_regression=0.01), 3, acc(0.80), 2, acc(0.85))
    assert not d.promote and d.reason == "Regression"


def test_small_regression_within_max_regression_is_promoted():
    assert should_promote(PromotionSpec(max_regression=0.05), 3, acc(0.82), 2, acc(0.85)).promote


def test_lower_is_better_metrics_compare_in_the_right_direction():
    assert should_promote(PromotionSpec(max_regression=0.1, min_metric=5.0), 2, rmse(4.0), 1, rmse(4.05)).promote
    assert not should_promote(PromotionSpec(max_regression=0.1), 2, rmse(4.5), 1, rmse(4.0)).promote
    assert not should_promote(PromotionSpec(min_metric=3.0), 2, rmse(4.0), 1, rmse(4.0)).promote


def test_manual_policy_waits_for_approval_of_that_version():
    p = PromotionSpec(policy="manual", approved_version=2)
    assert not should_promote(p, 3, acc(0.9), 1, acc(0.8)).promote
    assert should_promote(p, 2, acc(0.9), 1, acc(0.8)).promote


def test_metric_mismatch_is_not_compared():
    d = should_promote(PromotionSpec(max_regression=0.1), 2, acc(0.9), 1, {"name": "f1", "value": 0.5})
    assert not d.promote and d.reason == "MetricMismatch"
