"""XGBoost and LightGBM estimators (modelloop.api.training.BOOSTING_ESTIMATORS): what the trainer does
differently for them.

They are built from the spec and fitted through their scikit-learn API like any estimator (same split,
metrics, reference sketches, calibration), with three differences:

- XGBClassifier learns the classes 0..K-1 only: `EncodedLabels` fits it on the positions of the labels and
  answers with the labels, as scikit-learn's classifiers and LGBMClassifier do;
- the model is stored in its library's own format (`native_model`: XGBoost's JSON, LightGBM's text), never
  skops or pickle (modelloop.artifacts.native_model says how it is verified);
- it is served through model.onnx only (onnx_trees.py writes it in the library's arithmetic): a version
  without ONNX parity is not written (trainer.py).

Params that would give a model the ONNX export cannot reproduce are refused with the spec
(`check_params`), before any data is read.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from modelloop.api.training import BOOSTING_ESTIMATORS
from modelloop.artifacts.metadata import LIGHTGBM_TEXT, NATIVE_FORMATS, XGBOOST_JSON

from .errors import SpecError

# Set unless the spec sets them: LightGBM logs to stdout (where modelloop-train prints the version's URI)
# unless told not to; the trainer logs its steps itself.
DEFAULT_PARAMS: Mapping[str, Mapping[str, Any]] = {"lightgbm": {"verbose": -1}}
# (param, the values the ONNX export reproduces, why): other values are refused with the spec.
SUPPORTED_VALUES: Mapping[str, tuple[tuple[str, tuple[Any, ...], str], ...]] = {
    "xgboost": (("booster", (None, "gbtree"), "gblinear and dart models are not exported to ONNX"),
                ("multi_strategy", (None, "one_output_per_tree"), "multi-output trees are not exported to ONNX")),
    "lightgbm": (("boosting_type", ("gbdt", "dart", "goss"), "random-forest mode ('rf') is not exported to ONNX"),),
}


def is_boosting(class_path: str) -> bool:
    return class_path in BOOSTING_ESTIMATORS


def library(class_path: str) -> str:
    return class_path.split(".")[0]


def accepted_params(cls: type) -> set[str]:
    """The params of a boosting estimator: those get_params reports (XGBoost's constructors take **kwargs,
    so their signatures do not list them; LightGBM's pass any other name to the library, where some, such as
    linear_tree, give models the ONNX export does not reproduce: only the listed ones), and the defaults."""
    library_defaults = DEFAULT_PARAMS.get(cls.__module__.split(".")[0], {})
    return set(cls().get_params(deep=False)) | set(library_defaults)


def with_defaults(class_path: str, params: Mapping[str, Any]) -> dict[str, Any]:
    return {**DEFAULT_PARAMS.get(library(class_path), {}), **params}


def check_params(class_path: str, params: Mapping[str, Any]) -> None:
    for name, supported, why in SUPPORTED_VALUES.get(library(class_path), ()):
        if name in params and params[name] not in supported:
            raise SpecError(f"spec.estimator.params.{name} {params[name]!r} is not supported for {class_path}: "
                            f"{why}, and modelloop serves these models through ONNX; use "
                            f"{' or '.join(repr(v) for v in supported if v is not None)}")


def wrap(estimator: Any) -> Any:
    """The estimator as the trainer fits it: XGBClassifier inside EncodedLabels, any other as it is."""
    return EncodedLabels(estimator) if type(estimator).__name__ == "XGBClassifier" else estimator


def unwrap(estimator: Any) -> Any:
    return estimator.estimator if isinstance(estimator, EncodedLabels) else estimator


class EncodedLabels(ClassifierMixin, BaseEstimator):
    """A classifier that learns the classes 0..K-1 only (XGBClassifier), fitted on the positions of the labels
    in `classes_` (sorted, as scikit-learn's LabelEncoder sorts them), answering with the labels."""

    def __init__(self, estimator: Any) -> None:
        self.estimator = estimator

    def fit(self, x: Any, y: Any) -> EncodedLabels:
        self.classes_, encoded = np.unique(np.asarray(y), return_inverse=True)
        self.estimator.fit(x, encoded)
        self.n_features_in_ = self.estimator.n_features_in_
        if hasattr(self.estimator, "feature_names_in_"):
            self.feature_names_in_ = self.estimator.feature_names_in_
        return self

    def predict(self, x: Any) -> np.ndarray:
        return self.classes_.take(np.asarray(self.estimator.predict(x), dtype=np.intp))

    def predict_proba(self, x: Any) -> np.ndarray:
        return self.estimator.predict_proba(x)


def native_model(estimator: Any) -> tuple[bytes, str]:
    """(the fitted estimator's model in its library's format, the format's name in metadata.json)."""
    fitted = unwrap(estimator)
    path = f"{type(fitted).__module__.split('.')[0]}.{type(fitted).__name__}"
    model_format = NATIVE_FORMATS[path]
    if model_format == XGBOOST_JSON:
        return bytes(fitted.get_booster().save_raw(raw_format="json")), model_format
    assert model_format == LIGHTGBM_TEXT
    return fitted.booster_.model_to_string().encode("utf-8"), model_format
