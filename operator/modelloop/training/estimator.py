"""The estimator of a spec: an allow-listed scikit-learn class (or one of the boosting estimators,
boosting.py), its params, and the model around it.

`build_estimator` only imports and constructs (no data), so a controller can use it to check a spec
before starting a Job.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Literal, Mapping, Sequence

from modelloop.api.training import ALLOWED_ESTIMATOR_MODULES

from . import boosting
from .errors import SpecError
from .spec import ESTIMATOR_CLASS_RULE

Task = Literal["classification", "regression"]
PREPROCESS_STEP, ESTIMATOR_STEP, CATEGORICAL_TRANSFORMER = "preprocess", "estimator", "categorical"


def load_estimator_class(class_path: str) -> type:
    """Import `class_path` if it names a public BaseEstimator subclass inside the allowed modules, or one of
    the boosting estimators."""
    from sklearn.base import BaseEstimator

    field = f"spec.estimator.class {class_path!r}"
    parts = class_path.split(".") if isinstance(class_path, str) else []
    allowed_module = (len(parts) >= 3 and parts[0] in ALLOWED_ESTIMATOR_MODULES
                      and all(p.isidentifier() and not p.startswith("_") for p in parts))
    if not (allowed_module or boosting.is_boosting(class_path)):
        raise SpecError(f"{field} is not an allowed estimator; {ESTIMATOR_CLASS_RULE}")
    module_name, class_name = ".".join(parts[:-1]), parts[-1]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise SpecError(f"{field}: module {module_name} does not exist; {ESTIMATOR_CLASS_RULE}") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise SpecError(f"{field}: {module_name} has no class {class_name}")
    if not (inspect.isclass(cls) and issubclass(cls, BaseEstimator)) or inspect.isabstract(cls):
        raise SpecError(f"{field} is not a scikit-learn estimator class; {ESTIMATOR_CLASS_RULE}")
    return cls


def build_estimator(class_path: str, params: Mapping[str, Any] | None, *, seed: int | None = None
                    ) -> tuple[Any, dict[str, Any], Task]:
    """Construct the estimator with `params` (validated now, not at fit time).

    Returns the estimator, the params it was built with (those of the spec, plus random_state=seed
    when the estimator has one and the spec leaves it unset) and its task.
    """
    from sklearn.base import is_classifier, is_regressor

    cls = load_estimator_class(class_path)
    params = dict(params or {})
    if boosting.is_boosting(class_path):
        boosting.check_params(class_path, params)
        params = boosting.with_defaults(class_path, params)
    accepted = boosting.accepted_params(cls) if boosting.is_boosting(class_path) else _constructor_params(cls)
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise SpecError(f"spec.estimator.params: unknown parameter(s) {', '.join(unknown)} for {class_path}; "
                        f"valid: {', '.join(sorted(accepted))}")
    if seed is not None and "random_state" in accepted and "random_state" not in params:
        params["random_state"] = seed
    try:
        estimator = cls(**params)
        if hasattr(estimator, "_parameter_constraints"):  # what fit() checks first; fail before reading any data
            estimator._validate_params()
    except (TypeError, ValueError) as exc:
        raise SpecError(f"spec.estimator.params are invalid for {class_path}: {exc}") from None
    try:
        classifier, regressor = is_classifier(estimator), is_regressor(estimator)
    except AttributeError:  # a meta-estimator whose tags come from an estimator object params cannot give
        raise SpecError(f"spec.estimator.class {class_path!r} needs an estimator object as a parameter; "
                        f"modelloop trains estimators built from JSON params") from None
    if classifier:
        task: Task = "classification"
    elif regressor:
        task = "regression"
    else:
        raise SpecError(f"spec.estimator.class {class_path!r} is neither a classifier nor a regressor; "
                        f"modelloop trains supervised models")
    return estimator, params, task


def _constructor_params(cls: type) -> set[str]:
    signature = inspect.signature(cls.__init__)
    return {name for name, p in signature.parameters.items()
            if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def build_model(estimator: Any, categorical: Sequence[str]) -> Any:
    """The estimator alone, or a Pipeline one-hot encoding `categorical` columns first (an XGBClassifier
    inside boosting.EncodedLabels, either way).

    Both take a pandas DataFrame with the schema's feature columns. Encoded columns are dense so
    that every estimator (e.g. HistGradientBoosting) accepts them; unseen categories encode as zeros.
    """
    estimator = boosting.wrap(estimator)
    if not categorical:
        return estimator
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    encode = ColumnTransformer(
        [(CATEGORICAL_TRANSFORMER, OneHotEncoder(handle_unknown="ignore", sparse_output=False), list(categorical))],
        remainder="passthrough", sparse_threshold=0.0)
    return Pipeline([(PREPROCESS_STEP, encode), (ESTIMATOR_STEP, estimator)])


def learned_categories(model: Any) -> dict[str, list[Any]]:
    """Categories the fitted model's encoder knows, per categorical column (missing values left out)."""
    steps = getattr(model, "named_steps", None)
    if not steps or PREPROCESS_STEP not in steps:
        return {}
    transformer = steps[PREPROCESS_STEP]
    encoder = transformer.named_transformers_[CATEGORICAL_TRANSFORMER]
    columns = next(cols for name, _, cols in transformer.transformers_ if name == CATEGORICAL_TRANSFORMER)
    return {column: [v for v in cats.tolist() if v is not None and v == v]
            for column, cats in zip(columns, encoder.categories_)}
