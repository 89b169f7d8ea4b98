"""Validation metrics: the spec's primary metric plus the standard set of the task."""
from __future__ import annotations

import math
import warnings
from typing import Any

from modelloop.api.training import CLASSIFICATION_METRICS, REGRESSION_METRICS

from .errors import FitError, SpecError, describe_exception
from .estimator import Task

STANDARD_METRICS = {"classification": ("accuracy", "f1", "roc_auc"), "regression": ("r2", "rmse", "mae")}
DEFAULT_METRIC = {"classification": "accuracy", "regression": "r2"}
TASK_METRICS = {"classification": CLASSIFICATION_METRICS, "regression": REGRESSION_METRICS}
# Classifiers whose predict() is, in scikit-learn's code, the class of highest predict_proba():
# their validation predictions are taken from the probabilities, sparing a second pass over the
# split (identical up to exact floating-point ties; tests/unit/training checks each one).
PREDICT_IS_MOST_PROBABLE = frozenset({
    "sklearn.ensemble.RandomForestClassifier", "sklearn.ensemble.ExtraTreesClassifier",
    "sklearn.ensemble.HistGradientBoostingClassifier", "sklearn.tree.DecisionTreeClassifier",
    "sklearn.tree.ExtraTreeClassifier", "lightgbm.LGBMClassifier", "xgboost.XGBClassifier",
})


def primary_metric(metric: str | None, task: Task, class_path: str) -> str:
    """The spec's metric (checked against the task) or the task's default."""
    if metric is None:
        return DEFAULT_METRIC[task]
    if metric not in TASK_METRICS[task]:
        raise SpecError(f"spec.validation.metric '{metric}' does not apply to {class_path}, a {task} estimator; "
                        f"use one of {', '.join(TASK_METRICS[task])}")
    return metric


def validation_predictions(model: Any, class_path: str, features: Any) -> tuple[Any, Any | None]:
    """(predictions, class probabilities or None) of the validation features, in one pass when possible."""
    if class_path in PREDICT_IS_MOST_PROBABLE:
        import numpy as np

        probabilities = model.predict_proba(features)
        return model.classes_.take(np.argmax(probabilities, axis=1)), probabilities
    return model.predict(features), None


def evaluate(model: Any, features: Any, target: Any, predictions: Any, task: Task, primary: str,
             probabilities: Any | None = None) -> dict[str, float]:
    """Metrics on the validation split; those undefined on it (e.g. roc_auc with one class) are left out,
    unless it is the primary metric, which FitError reports."""
    wanted = list(dict.fromkeys([*STANDARD_METRICS[task], primary]))
    if task == "classification":
        metrics, undefined = _classification(model, features, target, predictions, wanted, probabilities)
    else:
        metrics, undefined = _regression(target, predictions, wanted)
    if primary not in metrics:
        raise FitError(f"spec.validation.metric '{primary}' is undefined on the validation split: "
                       f"{undefined.get(primary, 'no value')}")
    return metrics


def _regression(y: Any, predicted: Any, wanted: list[str]) -> tuple[dict[str, float], dict[str, str]]:
    from sklearn import metrics as m

    functions = {"r2": m.r2_score, "rmse": m.root_mean_squared_error, "mae": m.mean_absolute_error}
    return _collect({name: (lambda f=functions[name]: f(y, predicted)) for name in wanted})


def _classification(model: Any, features: Any, y: Any, predicted: Any, wanted: list[str],
                    probabilities: Any | None) -> tuple[dict[str, float], dict[str, str]]:
    import numpy as np
    from sklearn import metrics as m

    classes = model.classes_
    binary = len(classes) == 2
    averaging = {"average": "binary", "pos_label": classes[1]} if binary else {"average": "macro"}
    cached = {"proba": probabilities}

    def proba() -> Any:  # computed once, only if a metric needs it
        if cached["proba"] is None:
            cached["proba"] = model.predict_proba(features)
        return cached["proba"]

    def roc_auc() -> float:
        scores = proba() if hasattr(model, "predict_proba") else model.decision_function(features)
        if binary and scores.ndim == 2:
            scores = scores[:, 1]
        return m.roc_auc_score(y, scores, multi_class="ovr", labels=None if binary else classes)

    calculations = {
        "accuracy": lambda: m.accuracy_score(y, predicted),
        "f1": lambda: m.f1_score(y, predicted, zero_division=0, **averaging),
        "precision": lambda: m.precision_score(y, predicted, zero_division=0, **averaging),
        "recall": lambda: m.recall_score(y, predicted, zero_division=0, **averaging),
        "roc_auc": roc_auc,
        "log_loss": lambda: m.log_loss(y, proba(), labels=np.asarray(classes)),
    }
    return _collect({name: calculations[name] for name in wanted})


def _collect(calculations: dict[str, Any]) -> tuple[dict[str, float], dict[str, str]]:
    from sklearn.exceptions import UndefinedMetricWarning

    values: dict[str, float] = {}
    undefined: dict[str, str] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error", UndefinedMetricWarning)  # e.g. roc_auc with one class: undefined, not NaN
        for name, calculate in calculations.items():
            try:
                value = float(calculate())
            except (ValueError, AttributeError, TypeError, UndefinedMetricWarning) as exc:
                undefined[name] = describe_exception(exc)
                continue
            if math.isfinite(value):
                values[name] = value
            else:
                undefined[name] = f"value {value}"
    return values, undefined
