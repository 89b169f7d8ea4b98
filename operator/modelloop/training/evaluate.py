"""Validation metrics: the spec's primary metric plus the standard set of the task."""
from __future__ import annotations

import math
from typing import Any

from modelloop.api.training import CLASSIFICATION_METRICS, REGRESSION_METRICS

from .errors import FitError, SpecError
from .estimator import Task

STANDARD_METRICS = {"classification": ("accuracy", "f1", "roc_auc"), "regression": ("r2", "rmse", "mae")}
DEFAULT_METRIC = {"classification": "accuracy", "regression": "r2"}
TASK_METRICS = {"classification": CLASSIFICATION_METRICS, "regression": REGRESSION_METRICS}


def primary_metric(metric: str | None, task: Task, class_path: str) -> str:
    """The spec's metric (checked against the task) or the task's default."""
    if metric is None:
        return DEFAULT_METRIC[task]
    if metric not in TASK_METRICS[task]:
        raise SpecError(f"spec.validation.metric '{metric}' does not apply to {class_path}, a {task} estimator; "
                        f"use one of {', '.join(TASK_METRICS[task])}")
    return metric


def evaluate(model: Any, features: Any, target: Any, predictions: Any, task: Task, primary: str
             ) -> dict[str, float]:
    """Metrics on the validation split; those undefined on it (e.g. roc_auc with one class) are left out,
    unless it is the primary metric, which FitError reports."""
    wanted = list(dict.fromkeys([*STANDARD_METRICS[task], primary]))
    compute = _classification if task == "classification" else _regression
    metrics, undefined = compute(model, features, target, predictions, wanted)
    if primary not in metrics:
        raise FitError(f"spec.validation.metric '{primary}' is undefined on the validation split: "
                       f"{undefined.get(primary, 'no value')}")
    return metrics


def _regression(model: Any, features: Any, y: Any, predicted: Any, wanted: list[str]
                ) -> tuple[dict[str, float], dict[str, str]]:
    from sklearn import metrics as m

    functions = {"r2": m.r2_score, "rmse": m.root_mean_squared_error, "mae": m.mean_absolute_error}
    return _collect({name: (lambda f=functions[name]: f(y, predicted)) for name in wanted})


def _classification(model: Any, features: Any, y: Any, predicted: Any, wanted: list[str]
                    ) -> tuple[dict[str, float], dict[str, str]]:
    import numpy as np
    from sklearn import metrics as m

    classes = model.classes_
    binary = len(classes) == 2
    averaging = {"average": "binary", "pos_label": classes[1]} if binary else {"average": "macro"}
    scores: dict[str, Any] = {}

    def probabilities() -> Any:
        if "proba" not in scores:
            scores["proba"] = model.predict_proba(features)
        return scores["proba"]

    def roc_auc() -> float:
        if hasattr(model, "predict_proba"):
            s = probabilities()
            return m.roc_auc_score(y, s[:, 1] if binary else s, multi_class="ovr", labels=None if binary else classes)
        s = model.decision_function(features)
        return m.roc_auc_score(y, s, multi_class="ovr", labels=None if binary else classes)

    calculations = {
        "accuracy": lambda: m.accuracy_score(y, predicted),
        "f1": lambda: m.f1_score(y, predicted, zero_division=0, **averaging),
        "precision": lambda: m.precision_score(y, predicted, zero_division=0, **averaging),
        "recall": lambda: m.recall_score(y, predicted, zero_division=0, **averaging),
        "roc_auc": roc_auc,
        "log_loss": lambda: m.log_loss(y, probabilities(), labels=np.asarray(classes)),
    }
    return _collect({name: calculations[name] for name in wanted})


def _collect(calculations: dict[str, Any]) -> tuple[dict[str, float], dict[str, str]]:
    values: dict[str, float] = {}
    undefined: dict[str, str] = {}
    for name, calculate in calculations.items():
        try:
            value = float(calculate())
        except (ValueError, AttributeError, TypeError) as exc:
            undefined[name] = f"{type(exc).__name__}: {exc}"
            continue
        if math.isfinite(value):
            values[name] = value
        else:
            undefined[name] = f"value {value}"
    return values, undefined
