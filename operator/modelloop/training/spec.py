"""The spec the trainer runs: a ModelTraining `spec` (camelCase JSON), parsed with modelloop.api."""
from __future__ import annotations

from typing import Any, Mapping

from pydantic import ValidationError

from modelloop.api.training import ALLOWED_ESTIMATOR_MODULES, BOOSTING_ESTIMATORS, ModelTrainingSpec

from .errors import SpecError

ESTIMATOR_CLASS_RULE = (f"allowed: public estimator classes in the modules "
                        f"{', '.join(m + '.*' for m in ALLOWED_ESTIMATOR_MODULES)}, "
                        f"e.g. sklearn.ensemble.RandomForestClassifier, and {', '.join(BOOSTING_ESTIMATORS)}")


def parse_spec(spec: Mapping[str, Any]) -> ModelTrainingSpec:
    """Validate a ModelTraining spec; SpecError lists each bad field as spec.<path>."""
    if not isinstance(spec, Mapping):
        raise SpecError(f"spec must be a JSON object, got {type(spec).__name__}")
    try:
        return ModelTrainingSpec.model_validate(dict(spec))
    except ValidationError as exc:
        raise SpecError("; ".join(_describe(error) for error in exc.errors())) from None


def _describe(error: Any) -> str:
    path = "spec." + ".".join(str(part) for part in error["loc"])
    if path == "spec.estimator.class" and error["type"] == "string_pattern_mismatch":
        return f"{path} {error['input']!r} is not an allowed estimator; {ESTIMATOR_CLASS_RULE}"
    value = error.get("input")
    shown = "" if error["type"] == "missing" or isinstance(value, (dict, list)) else f" (got {value!r})"
    return f"{path}: {error['msg']}{shown}"
