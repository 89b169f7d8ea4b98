"""Whether a new model version may replace the serving one. Pure."""
from __future__ import annotations

from dataclasses import dataclass

from .api.deployment import PromotionSpec
from .api.training import LOWER_IS_BETTER


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str      # CamelCase, for conditions and events
    message: str


def should_promote(policy: PromotionSpec, candidate_version: int, candidate_metric: dict | None,
                   serving_version: int | None, serving_metric: dict | None) -> Decision:
    """Decide for `candidate_version` against the serving version.

    With no serving version the candidate is the first model: only minMetric applies. Metrics are
    compared in the direction of the metric (rmse, mae, log_loss: lower is better).
    """
    if serving_version is not None and candidate_version == serving_version:
        return Decision(False, "AlreadyServing", f"version {candidate_version} is already serving")
    if policy.policy == "manual" and policy.approved_version != candidate_version:
        return Decision(False, "AwaitingApproval",
                        f"version {candidate_version} waits for approval (set spec.promotion.approvedVersion "
                        f"to {candidate_version})")
    name = (candidate_metric or {}).get("name")
    value = (candidate_metric or {}).get("value")
    lower = name in LOWER_IS_BETTER
    if policy.min_metric is not None:
        if value is None:
            return Decision(False, "MetricMissing", f"version {candidate_version} has no metric to compare with minMetric")
        if (value > policy.min_metric) if lower else (value < policy.min_metric):
            return Decision(False, "BelowMinMetric",
                            f"version {candidate_version} {name}={value:.4g} does not meet minMetric {policy.min_metric:g}")
    if policy.max_regression is not None and serving_metric and serving_metric.get("value") is not None:
        if serving_metric.get("name") != name:
            return Decision(False, "MetricMismatch", f"version {candidate_version} reports {name}, the serving "
                            f"version {serving_metric.get('name')}; they cannot be compared")
        worse_by = (value - serving_metric["value"]) if lower else (serving_metric["value"] - value)
        if worse_by > policy.max_regression + 1e-12:
            return Decision(False, "Regression",
                            f"version {candidate_version} {name}={value:.4g} is {worse_by:.4g} worse than serving "
                            f"version {serving_version} ({serving_metric['value']:.4g}); maxRegression is "
                            f"{policy.max_regression:g}")
    return Decision(True, "Promoted", f"version {candidate_version} promoted"
                    + (f" ({name}={value:.4g})" if value is not None else ""))
