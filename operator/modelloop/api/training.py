"""ModelTraining: a dataset, an estimator and where its versioned artifacts go."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field

from ..names import RETRAIN_ANNOTATION, RETRAIN_DATASET_ANNOTATION  # noqa: F401 - re-exported
from .common import (
    QUALIFIED_NAME_RE, URI_DESCRIPTION, ApiModel, Condition, LabelValue, MetricValue, ObjectName, PodOverrides,
    ResourceRequirements, StorageSpec, StorageUri, cel, conditions_field, extra, key_rules,
)

ALLOWED_ESTIMATOR_MODULES = ("sklearn",)
# Gradient-boosted trees from outside scikit-learn, allowed class by class (not module by module): each is
# stored in its library's own model format and served through model.onnx (docs/artifacts.md).
BOOSTING_ESTIMATORS = ("xgboost.XGBClassifier", "xgboost.XGBRegressor", "lightgbm.LGBMClassifier",
                       "lightgbm.LGBMRegressor")
ESTIMATOR_CLASS_PATTERN = (r"^(sklearn(\.[a-z][a-z0-9_]*)+\.[A-Z][A-Za-z0-9_]*|"
                           + "|".join(c.replace(".", r"\.") for c in BOOSTING_ESTIMATORS) + ")$")
CLASSIFICATION_METRICS = ("accuracy", "f1", "roc_auc", "precision", "recall", "log_loss")
REGRESSION_METRICS = ("r2", "rmse", "mae")
Metric = Literal["accuracy", "f1", "roc_auc", "precision", "recall", "log_loss", "r2", "rmse", "mae"]
# Metrics where a lower value is better; promotion and regression checks flip for these.
LOWER_IS_BETTER = frozenset({"log_loss", "rmse", "mae"})
ColumnName = Annotated[str, Field(min_length=1, max_length=256)]
# Versions kept in the store by default (spec.output.keepVersions), and the most that can be asked for.
DEFAULT_KEEP_VERSIONS = 10
MAX_KEEP_VERSIONS = 1000


class DatasetSpec(ApiModel):
    """The tabular dataset to train on."""

    uri: StorageUri = Field(description=f"Where the dataset is: {URI_DESCRIPTION}")
    format: Literal["csv", "parquet"] | None = Field(default=None, description=(
        "File format; inferred from the URI's extension (.csv, .parquet, .pq) when omitted."))
    target: str = Field(description="Column to predict.", min_length=1, max_length=256)
    features: list[ColumnName] | None = Field(default=None, max_length=10000, description=(
        "Columns to train on, in this order; default every column except the target."),
        json_schema_extra=extra(x_kubernetes_list_type="set"))
    categorical: list[ColumnName] | None = Field(default=None, max_length=10000, description=(
        "Columns to treat as categorical (one-hot encoded, category counts for drift); non-numeric "
        "columns are categorical anyway."), json_schema_extra=extra(x_kubernetes_list_type="set"))


DatasetSpec.model_config["json_schema_extra"] = extra(x_kubernetes_validations=[
    cel("!has(self.features) || !(self.target in self.features)",
        "spec.dataset.target must not also be listed in spec.dataset.features", ".target"),
    cel("!has(self.categorical) || !(self.target in self.categorical)",
        "spec.dataset.target must not be listed in spec.dataset.categorical", ".categorical"),
])


class EstimatorSpec(ApiModel):
    """The estimator to fit: scikit-learn's, XGBoost's or LightGBM's."""

    class_name: str = Field(alias="class", max_length=256, pattern=ESTIMATOR_CLASS_PATTERN, description=(
        "Importable class path of a scikit-learn estimator, e.g. sklearn.ensemble.RandomForestClassifier, or "
        f"one of {', '.join(BOOSTING_ESTIMATORS)}. Only classes inside the allowed modules (sklearn.*) and "
        "these four are accepted."))
    params: dict[str, Any] | None = Field(default=None, description=(
        "Constructor parameters of the estimator, e.g. {n_estimators: 100, max_depth: 8}. They are checked "
        "by constructing the estimator before the Job starts."),
        json_schema_extra=extra(x_kubernetes_preserve_unknown_fields=True))


EstimatorSpec.model_config["json_schema_extra"] = extra(x_kubernetes_validations=[
    cel(f"(self.class.startsWith('sklearn.') && !self.class.contains('._')) || self.class in "
        f"[{', '.join(repr(c) for c in BOOSTING_ESTIMATORS)}]",
        f"spec.estimator.class must be a public class inside the allowed modules (sklearn.*), "
        f"e.g. sklearn.ensemble.RandomForestClassifier, or one of {', '.join(BOOSTING_ESTIMATORS)}", ".class"),
])


class ValidationSpec(ApiModel):
    """How the model is evaluated before it becomes a version."""

    test_size: float = Field(default=0.2, gt=0, lt=1, description="Share of rows held out for validation.")
    seed: int = Field(default=42, ge=0, le=2**31 - 1, description="Random seed of the split and the estimator.")
    metric: Metric | None = Field(default=None, description=(
        "Primary metric, used by promotion: accuracy, f1, roc_auc, precision, recall, log_loss "
        "(classification) or r2, rmse, mae (regression). Default accuracy or r2 by task."))


class OutputSpec(ApiModel):
    """Where model versions are written."""

    uri: StorageUri = Field(description=f"Base location of the versions, each in <uri>/v<N>/: {URI_DESCRIPTION}")
    keep_versions: int = Field(default=DEFAULT_KEEP_VERSIONS, ge=1, le=MAX_KEEP_VERSIONS, description=(
        f"Newest versions kept in the store (default {DEFAULT_KEEP_VERSIONS}); older ones are deleted after each "
        "run, except a version a ModelDeployment of the namespace serves, rolls back to or pins, the latest good "
        "version and a running run's version. The storage credentials must allow deleting."))


class LabelSelectorRequirement(ApiModel):
    """One requirement of a label selector, as in metav1.LabelSelector."""

    key: str = Field(max_length=317, pattern=QUALIFIED_NAME_RE, description="Label key.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(description="In, NotIn, Exists or DoesNotExist.")
    values: list[LabelValue] | None = Field(
        default=None, max_length=64, description="Values for In and NotIn; empty for Exists and DoesNotExist.")


LabelSelectorRequirement.model_config["json_schema_extra"] = extra(x_kubernetes_validations=[
    cel("(self.operator in ['In', 'NotIn']) == (has(self.values) && size(self.values) > 0)",
        "values must be non-empty for In and NotIn, and empty for Exists and DoesNotExist", ".values"),
])


class LabelSelector(ApiModel):
    """A label selector, as in metav1.LabelSelector; an empty selector matches nothing here."""

    match_labels: dict[str, LabelValue] | None = Field(default=None, max_length=32, description=(
        "Labels that must match."), json_schema_extra=extra(x_kubernetes_validations=key_rules("matchLabels")))
    match_expressions: list[LabelSelectorRequirement] | None = Field(default=None, max_length=32, description=(
        "Requirements that must all hold."))

    def matches(self, labels: dict[str, str]) -> bool:
        """Whether `labels` satisfy the selector; an empty selector matches nothing (deny by default)."""
        if not self.match_labels and not self.match_expressions:
            return False
        if any(labels.get(k) != v for k, v in (self.match_labels or {}).items()):
            return False
        for r in self.match_expressions or ():
            present, value = r.key in labels, labels.get(r.key)
            ok = {"In": present and value in (r.values or ()), "NotIn": not present or value not in (r.values or ()),
                  "Exists": present, "DoesNotExist": not present}[r.operator]
            if not ok:
                return False
        return True


class RetrainSpec(ApiModel):
    """Which DriftMonitors may request a retrain of this ModelTraining. Nothing is allowed by default:
    a monitor can only start runs (and bring fresh data) where the training's owner said so."""

    allowed_monitors: list[ObjectName] | None = Field(default=None, max_length=64, description=(
        "Names of DriftMonitors in the same namespace that may request a retrain."),
        json_schema_extra=extra(x_kubernetes_list_type="set"))
    monitor_selector: LabelSelector | None = Field(default=None, description=(
        "DriftMonitors in the same namespace whose labels match may request a retrain."))

    def allows(self, monitor: str, labels: dict[str, str]) -> bool:
        return monitor in (self.allowed_monitors or ()) or bool(
            self.monitor_selector and self.monitor_selector.matches(labels))


class ModelTrainingSpec(ApiModel):
    """Desired state of a ModelTraining: what to train, on what, and where the versions go."""

    dataset: DatasetSpec = Field(description="The dataset to train on.")
    estimator: EstimatorSpec = Field(description="The estimator to fit.")
    validation: ValidationSpec = Field(default_factory=ValidationSpec, description="Evaluation settings.")
    output: OutputSpec = Field(description="Where versions are written.")
    storage: StorageSpec | None = Field(default=None, description="Credentials of the dataset and output stores.")
    resources: ResourceRequirements | None = Field(default=None, description=(
        "Resources of the training container; default requests cpu 500m, memory 512Mi and a memory limit of 4Gi."))
    pod_template: PodOverrides | None = Field(default=None, description="Overrides of the training pod.")
    backoff_limit: int = Field(default=0, ge=0, le=10, description="Retries of a failed training pod within one run.")
    active_deadline_seconds: int = Field(default=3600, ge=10, le=7 * 24 * 3600, description=(
        "Time limit of one run; a run past it fails with reason DeadlineExceeded."))
    history_limit: int = Field(default=10, ge=1, le=100, description="Runs kept in status.runs (newest first).")
    suspend: bool = Field(default=False, description="When true, no new run starts; a running one finishes.")
    retrain: RetrainSpec | None = Field(default=None, description=(
        "Which DriftMonitors may request retrains (default: none). Humans request one with the annotation "
        f"{RETRAIN_ANNOTATION}."))


class TrainingRun(ApiModel):
    """One training run."""

    version: int = Field(ge=1, description="Version number allocated to the run.")
    job: str = Field(description="Name of the run's Job.")
    trigger: str = Field(description="What started the run: Created, SpecChanged or RetrainRequested.")
    reason: str | None = Field(default=None, description="The retrain request's value, when it was one.")
    generation: int | None = Field(default=None, description="Generation of the spec the run trained with.")
    start_time: datetime | None = Field(default=None, description="When the run started.")
    finish_time: datetime | None = Field(default=None, description="When the run finished.")
    result: Literal["Running", "Succeeded", "Failed"] = Field(description="Running, Succeeded or Failed.")
    message: str | None = Field(default=None, description="Why the run failed (the trainer's termination message).")
    metrics: dict[str, float] | None = Field(default=None, description="Validation metrics of the run.")
    artifact: str | None = Field(default=None, description="URI of the version the run wrote.")
    onnx_skipped: str | None = Field(default=None, description=(
        "Why the version the run wrote has no model.onnx, so that it is served with scikit-learn only (no "
        "converter, or the ONNX graph did not match scikit-learn); unset when it has one."))
    pruned_time: datetime | None = Field(default=None, description=(
        "When the run's version was found gone from the store, deleted by retention (spec.output.keepVersions); "
        "artifact is unset from then on."))


class ModelTrainingStatus(ApiModel):
    """Observed state of a ModelTraining."""

    observed_generation: int | None = Field(default=None, description="The .metadata.generation last reconciled.")
    conditions: list[Condition] | None = conditions_field()
    phase: Literal["Pending", "Running", "Succeeded", "Failed"] | None = Field(default=None, description=(
        "Summary for humans: state of the latest run."))
    latest_version: int | None = Field(default=None, description="Newest version that trained successfully.")
    latest_artifact: str | None = Field(default=None, description="URI of the latest good version.")
    metric: MetricValue | None = Field(default=None, description="Primary metric of the latest good version.")
    metrics: dict[str, float] | None = Field(default=None, description="All metrics of the latest good version.")
    next_version: int | None = Field(default=None, description="Version number the next run will get.")
    current_run: str | None = Field(default=None, description="Job of the run in progress, if any.")
    queued_request: str | None = Field(default=None, description=(
        "A retrain request that arrived during a run; it starts when the run ends."))
    handled_request: str | None = Field(default=None, description="Value of the last retrain request acted on.")
    runs: list[TrainingRun] | None = Field(default=None, description="Recent runs, newest first.")
    stored_versions: list[int] | None = Field(default=None, description=(
        "Versions in the store after the last retention pass (after each run), ascending."))


class ModelTraining(ApiModel):
    """Trains a scikit-learn model in a Job and writes immutable, checksummed versions."""

    spec: ModelTrainingSpec = Field(description="Desired state.")
    status: ModelTrainingStatus | None = Field(default=None, description="Observed state, written by the operator.")


ModelTraining.model_config["json_schema_extra"] = extra(x_kubernetes_validations=[
    cel("self.metadata.name.size() <= 48",
        "metadata.name must be at most 48 characters (Job names add a version suffix)"),
])

KIND = {
    "kind": "ModelTraining", "plural": "modeltrainings", "singular": "modeltraining", "short_names": ["mtrain"],
    "model": ModelTraining,
    "printer_columns": [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Version", "type": "integer", "jsonPath": ".status.latestVersion"},
        {"name": "Metric", "type": "string", "jsonPath": ".status.metric.name"},
        {"name": "Value", "type": "string", "jsonPath": ".status.metric.display"},
        {"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"},
        {"name": "Estimator", "type": "string", "jsonPath": ".spec.estimator.class", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
    "scale": None,
}
