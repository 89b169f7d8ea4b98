"""The exact type list (modelloop/artifacts/trusted_types.py) is what the allowed estimators produce, and
every model they produce is stored and loaded back by the real serialise/load path."""
from __future__ import annotations

import numpy as np
import pytest
import skops.io

from modelloop.artifacts import deserialize_model, serialize_model
from modelloop.artifacts.trusted_types import TRUSTED_NODES
from modelloop.training.trusted_types import Fitted, allowed_estimator_paths, collect, committed, fitted_models

REGENERATE = "python -m modelloop.training.trusted_types --write"


@pytest.fixture(scope="module")
def corpus() -> list[tuple[Fitted, bytes]]:
    """Every model the generator fits, with its skops bytes (fitted once for this module: ~30 s)."""
    return [(fitted, skops.io.dumps(fitted.model)) for fitted in fitted_models()]


def test_the_committed_list_is_what_the_allowed_estimators_produce(corpus: list[tuple[Fitted, bytes]]) -> None:
    found = collect(data for _, data in corpus)
    assert found == committed(), (
        f"operator/modelloop/artifacts/trusted_types.py is stale for the installed libraries; review the "
        f"difference and run `{REGENERATE}`")


def test_every_allowed_estimator_is_fitted_at_least_once(corpus: list[tuple[Fitted, bytes]]) -> None:
    fitted = {f.path for f, _ in corpus}
    # These need shapes a single-target table cannot give (several targets, or one feature column per
    # component); the trainer fails their runs at fit time.
    unfittable = {"sklearn.cross_decomposition.CCA", "sklearn.cross_decomposition.PLSCanonical",
                  "sklearn.linear_model.MultiTaskElasticNet", "sklearn.linear_model.MultiTaskElasticNetCV",
                  "sklearn.linear_model.MultiTaskLasso", "sklearn.linear_model.MultiTaskLassoCV"}
    assert set(allowed_estimator_paths()) - fitted == unfittable


def test_every_model_the_allowed_estimators_produce_round_trips(corpus: list[tuple[Fitted, bytes]]) -> None:
    for fitted, data in corpus:
        if not fitted.option:  # the trainer's own path, once per estimator and dataset (it dumps again)
            data, _ = serialize_model(fitted.model)
        loaded = deserialize_model(data)
        expected, got = fitted.model.predict(fitted.features), loaded.predict(fitted.features)
        if np.array_equal(got, expected):
            continue
        # only a model random by design may differ (DummyClassifier's "stratified", "uniform")
        assert not np.array_equal(expected, fitted.model.predict(fitted.features)), (fitted.path, fitted.option)
        assert got.shape == expected.shape and got.dtype == expected.dtype, (fitted.path, fitted.option)


def test_the_list_holds_no_function_and_no_node_kind_that_calls_by_name() -> None:
    # Functions come only from HARMLESS_UFUNCS; these node kinds call or import whatever they name.
    assert not {"FunctionNode", "MethodNode", "PartialNode", "OperatorFuncNode", "ConstructorFromReduceNode",
                "CachedNode"} & set(TRUSTED_NODES)
    types_called_as_functions = TRUSTED_NODES.get("TypeNode", frozenset())
    assert types_called_as_functions <= {"builtins.str", "builtins.int", "builtins.float", "builtins.bool",
                                         "numpy.bool", "numpy.float64", "numpy.int64", "numpy.str_"}
