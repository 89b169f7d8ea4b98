"""DriftMonitor: compares live traffic of a ModelDeployment with its training reference and acts."""
from __future__ import annotations

import math
from datetime import datetime
from typing import Literal

from pydantic import Field

from ..drift.detect import DEFAULT_MIN_SAMPLES
from .common import (
    DURATION_PATTERN, URI_DESCRIPTION, ApiModel, Condition, LocalObjectReference, StorageSpec, StorageUri, cel,
    conditions_field, duration_rule, extra,
)

# Bounds of spec.interval: each check costs API calls and a request to every server pod.
MIN_INTERVAL_SECONDS = 10
MIN_INTERVAL, MAX_INTERVAL = f"{MIN_INTERVAL_SECONDS}s", "24h"


class TestsSpec(ApiModel):
    """Which statistic decides drift, per kind of feature."""

    numerical: Literal["psi", "ks", "wasserstein", "jensenshannon"] | None = Field(default=None, description=(
        "Test of numeric features: psi, ks, wasserstein or jensenshannon (default: the engine's, see docs/drift.md)."))
    categorical: Literal["chi2", "psi", "jensenshannon"] | None = Field(default=None, description=(
        "Test of categorical features: chi2, psi or jensenshannon (default: the engine's, see docs/drift.md)."))


class ThresholdsSpec(ApiModel):
    """When a feature, and the dataset, count as drifted."""

    score: float | None = Field(default=None, ge=0, description=(
        "Per-feature score above which a feature drifts (PSI, distance or statistic of the chosen test)."))
    p_value: float | None = Field(default=None, gt=0, lt=1, description=(
        "Significance level of p-value tests after multiple-testing correction."))
    drift_share: float | None = Field(default=None, gt=0, le=1, description=(
        "Share of drifted features at or above which the dataset drifts."))
    missing: float | None = Field(default=None, ge=0, le=math.pi, description=(
        "Cohen's h of the change of a feature's share of missing values above which, with a significant "
        "Fisher test, the feature drifts (default 0.1: 0% to 0.25%, 5% to 7.4%, 50% to 55%; see docs/drift.md)."))
    features: dict[str, float] | None = Field(default=None, max_length=10000, description=(
        "Per-feature score thresholds by name."), json_schema_extra=extra(x_kubernetes_validations=[
            cel("self.all(k, self[k] >= 0.0)", "spec.thresholds.features values must be 0 or more")]))


class ActionSpec(ApiModel):
    """What to do when drift persists."""

    type: Literal["retrain", "none"] = Field(default="none", description=(
        "retrain: request a new training run; none: report only (conditions, events, metrics)."))
    training_ref: LocalObjectReference | None = Field(default=None, description=(
        "ModelTraining to retrain; default the one the deployment follows."))
    cooldown: str = Field(default="1h", pattern=DURATION_PATTERN, max_length=32, description=(
        "Least time between two retrain requests, e.g. 30m or 1h (at most 720h)."),
        json_schema_extra=extra(x_kubernetes_validations=[duration_rule("spec.action.cooldown", "0s", "720h")]))
    dataset_uri: StorageUri | None = Field(default=None, description=(
        f"Fresh data to retrain on, passed with the request: {URI_DESCRIPTION}"))


LIVE_METRICS = ("accuracy", "f1", "precision", "recall", "roc_auc", "mae", "rmse", "r2")


class PerformanceSpec(ApiModel):
    """Live performance: the served version's predictions joined with the ground truth fed back to its
    servers (ModelDeployment spec.feedback), against the version's hold-out value (docs/outcomes.md)."""

    metric: Literal[LIVE_METRICS] | None = Field(default=None, description=(  # type: ignore[valid-type]
        "The live metric that decides: accuracy, f1, precision, recall, roc_auc (binary), mae, rmse or r2 "
        "(default: the training's validation metric when it is one of these, else accuracy or rmse)."))
    max_drop: float = Field(default=0.05, ge=0, le=1e12, description=(
        "Tolerated drop below the hold-out value, in metric units: performance dropped when the whole 95% "
        "interval of the live value is worse than hold-out minus maxDrop (a one-sided test at 2.5%)."))
    min_labels: int = Field(default=200, ge=1, le=10**9, description=(
        "Fewest labelled predictions of the served version in the window before anything is decided."))
    window: str = Field(default="24h", pattern=DURATION_PATTERN, max_length=32, description=(
        "Predictions made within this time before a check are evaluated, e.g. 1h or 72h."),
        json_schema_extra=extra(x_kubernetes_validations=[duration_rule("spec.performance.window", "1m", "8784h")]))


class DriftMonitorSpec(ApiModel):
    """Desired state of a DriftMonitor."""

    deployment_ref: LocalObjectReference = Field(description="The ModelDeployment whose traffic is watched.")
    interval: str = Field(default="60s", pattern=DURATION_PATTERN, max_length=32, description=(
        f"Time between checks, e.g. 30s or 5m; from {MIN_INTERVAL} to {MAX_INTERVAL}."),
        json_schema_extra=extra(x_kubernetes_validations=[duration_rule("spec.interval", MIN_INTERVAL, MAX_INTERVAL)]))
    min_samples: int = Field(default=DEFAULT_MIN_SAMPLES, ge=1, le=10**9, description=(
        "Fewest new rows in a window before anything is decided."))
    dataset_uri: StorageUri | None = Field(default=None, description=(
        f"Compare this dataset with the reference instead of live traffic (exact tests on raw values): {URI_DESCRIPTION}"))
    tests: TestsSpec = Field(default_factory=TestsSpec, description="Statistics used per feature kind.")
    thresholds: ThresholdsSpec = Field(default_factory=ThresholdsSpec, description="Decision thresholds.")
    consecutive: int = Field(default=3, ge=1, le=100, description="Drifted windows in a row before acting.")
    action: ActionSpec = Field(default_factory=ActionSpec, description="What to do on persistent drift.")
    retrain_on: Literal["drift", "performance", "either"] = Field(default="drift", description=(
        "What requests a retrain (with action.type retrain): drift (input drift for `consecutive` windows), "
        "performance (a significant drop of live performance; input drift is then only reported) or either."))
    performance: PerformanceSpec = Field(default_factory=PerformanceSpec, description=(
        "Live performance, reported when the deployment has spec.feedback."))
    storage: StorageSpec | None = Field(default=None, description="Credentials of the reference and dataset stores.")


class FeatureDrift(ApiModel):
    """Drift of one feature in the last window."""

    name: str = Field(description="Feature name.")
    test: str = Field(description="Statistic used.")
    score: float = Field(description="Value of the statistic.")
    threshold: float | None = Field(default=None, description="Threshold the score is compared with.")
    p_value: float | None = Field(default=None, description="p-value after correction, for tests that have one.")
    drifted: bool = Field(description="Whether the feature drifted.")


class RetrainRequest(ApiModel):
    """The last retrain request: recorded here first, then delivered to the ModelTraining (its annotation)."""

    training: str = Field(description="The ModelTraining asked to retrain.")
    value: str = Field(max_length=1024, description="The request, as written to the training's "
                       "modelloop.dev/retrain annotation (the training runs once per value).")
    dataset_uri: str | None = Field(default=None, description="The dataset the retrain was asked to use.")
    delivered: bool = Field(description="Whether the annotation has been written; a request recorded but not yet "
                            "delivered (the operator stopped in between) is delivered at the next check.")


class VersionPerformance(ApiModel):
    """Live performance of one served version in the window."""

    version: int = Field(description="Model version.")
    metric: str = Field(description="The deciding metric (spec.performance.metric).")
    labelled: int = Field(description="Its predictions in the window that have a label.")
    value: float | None = Field(default=None, description="Live value of the metric.")
    low: float | None = Field(default=None, description="Lower end of its 95% interval.")
    high: float | None = Field(default=None, description="Upper end of its 95% interval.")
    holdout: float | None = Field(default=None, description="The version's value on the training hold-out.")
    source: Literal["live", "estimated"] = Field(description=(
        "live: from labels fed back; estimated: from the model's calibrated confidence, without labels."))
    dropped: bool | None = Field(default=None, description="Whether it dropped significantly below hold-out.")
    display: str | None = Field(default=None, max_length=128, description=(
        "For reading (the Live column): metric, live value and hold-out to three digits, labelled count."))


class ReportLocation(ApiModel):
    """Where the monitor's HTML report is (`modelloop report dmon/NAME -n NS` prints it)."""

    uri: str = Field(description=("The page, rewritten at each decision beside the model's versions "
                                  "(<output>/reports/<monitor>/report.html), with history.json, the checks it draws."))


class RetrainOutcome(ApiModel):
    """A retrained version the deployment's live analysis (or the watch after its promotion) rejected."""

    version: int = Field(description="The retrained version.")
    result: Literal["rejected", "rolledBack"] = Field(description=(
        "rejected: by the analysis, the champion kept serving; rolledBack: promoted, then rolled back by the watch."))
    time: str | None = Field(default=None, description="When it was rejected (RFC 3339).")
    message: str | None = Field(default=None, max_length=1024, description="Why, with the gates' numbers.")


class DriftMonitorStatus(ApiModel):
    """Observed state of a DriftMonitor."""

    observed_generation: int | None = Field(default=None, description="The .metadata.generation last reconciled.")
    conditions: list[Condition] | None = conditions_field()
    phase: Literal["Pending", "Watching", "Drifted", "InsufficientData", "Error"] | None = Field(
        default=None, description="Summary for humans.")
    last_check_time: datetime | None = Field(default=None, description="When the last window was checked.")
    model_version: int | None = Field(default=None, description="Serving version whose reference was used.")
    samples: int | None = Field(default=None, description="Rows in the last window.")
    dataset_drift: bool | None = Field(default=None, description="Whether the last window drifted as a whole.")
    drift_share: float | None = Field(default=None, description="Share of drifted features in the last window.")
    consecutive_drifted: int | None = Field(default=None, description="Drifted windows in a row so far.")
    features: list[FeatureDrift] | None = Field(default=None, description="Per-feature results of the last window.",
                                                json_schema_extra=extra(x_kubernetes_list_type="map",
                                                                        x_kubernetes_list_map_keys=["name"]))
    last_retrain_time: datetime | None = Field(default=None, description="When retraining was last requested.")
    retrains: int | None = Field(default=None, description="Retrain requests made so far.")
    retrain_request: RetrainRequest | None = Field(default=None, description="The last retrain request.")
    performance_dropped: bool | None = Field(default=None, description=(
        "The last decided verdict on live performance: true after a significant drop, false once it holds again "
        "(undecided checks, such as a new version's first minutes, leave it as it was)."))
    performance: list[VersionPerformance] | None = Field(default=None, description=(
        "Live performance per version in the window (the served one first)."),
        json_schema_extra=extra(x_kubernetes_list_type="map", x_kubernetes_list_map_keys=["version", "source"]))
    report: ReportLocation | None = Field(default=None, description="The monitor's HTML report.")
    retrain_outcome: RetrainOutcome | None = Field(default=None, description=(
        "What became of the last retrained version when the deployment's live analysis rejected it."))


class DriftMonitor(ApiModel):
    """Watches a ModelDeployment for data drift (PSI, KS, chi-squared, ...) and triggers retraining."""

    spec: DriftMonitorSpec = Field(description="Desired state.")
    status: DriftMonitorStatus | None = Field(default=None, description="Observed state, written by the operator.")


KIND = {
    "kind": "DriftMonitor", "plural": "driftmonitors", "singular": "driftmonitor", "short_names": ["dmon"],
    "model": DriftMonitor,
    "printer_columns": [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Drift", "type": "boolean", "jsonPath": ".status.datasetDrift"},
        {"name": "Share", "type": "number", "jsonPath": ".status.driftShare"},
        {"name": "Samples", "type": "integer", "jsonPath": ".status.samples"},
        {"name": "Version", "type": "integer", "jsonPath": ".status.modelVersion"},
        {"name": "Retrains", "type": "integer", "jsonPath": ".status.retrains"},
        {"name": "Live", "type": "string", "jsonPath": ".status.performance[0].display"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
    "scale": None,
}

# Drift test defaults are left to the engine (modelloop.drift) so they live in one place; the
# ActionSpec CEL rule below keeps a retrain action meaningful.
ActionSpec.model_config["json_schema_extra"] = extra(x_kubernetes_validations=[
    cel("self.type != 'none' || !has(self.datasetUri)",
        "spec.action.datasetUri needs spec.action.type retrain", ".datasetUri"),
])
