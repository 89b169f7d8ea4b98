"""export_onnx: every estimator the trainer allows either becomes a model.onnx that answers as scikit-learn
does (through the server's own OnnxPredictor), or stays skops-only with the reason; the table below is the
one in docs/artifacts.md."""
from __future__ import annotations

import io
import warnings

import numpy as np
import pandas as pd
import pytest

from modelloop.artifacts import OnnxPredictor, check_onnx_file
from modelloop.artifacts.metadata import FeatureSchema, OnnxInfo
from modelloop.training.dataset import schema_dtype
from modelloop.training.estimator import build_estimator, build_model, learned_categories
from modelloop.training.onnx_export import PARITY_TOLERANCE, export_onnx, server_columns
from modelloop.training.onnx_trees import float32_thresholds
from modelloop.training.trusted_types import SMALL_PARAMS, allowed_estimator_paths

# Why an allowed estimator stays skops-only (a fragment of the recorded reason). Everything else must
# convert with parity. docs/artifacts.md has the same table.
SKOPS_ONLY = {
    "sklearn.compose.TransformedTargetRegressor": "no converter",
    "sklearn.cross_decomposition.CCA": "no converter",
    "sklearn.cross_decomposition.PLSCanonical": "no converter",
    "sklearn.discriminant_analysis.LinearDiscriminantAnalysis": "parity failed",
    "sklearn.dummy.DummyClassifier": "no converter",
    "sklearn.dummy.DummyRegressor": "no converter",
    "sklearn.ensemble.AdaBoostClassifier": "conversion failed",
    "sklearn.ensemble.AdaBoostRegressor": "conversion failed",
    "sklearn.ensemble.BaggingClassifier": "parity failed",
    "sklearn.ensemble.BaggingRegressor": "conversion failed",
    "sklearn.gaussian_process.GaussianProcessClassifier": "conversion failed",
    "sklearn.isotonic.IsotonicRegression": "no converter",
    "sklearn.kernel_ridge.KernelRidge": "no converter",
    "sklearn.linear_model.RidgeClassifier": "conversion failed",
    "sklearn.linear_model.RidgeClassifierCV": "conversion failed",
    "sklearn.naive_bayes.CategoricalNB": "IndexError",
    "sklearn.neighbors.KNeighborsClassifier": "parity failed",
    "sklearn.neighbors.KNeighborsRegressor": "parity failed",
    "sklearn.neighbors.NearestCentroid": "no converter",
    "sklearn.neighbors.RadiusNeighborsClassifier": "refuses",
    "sklearn.neighbors.RadiusNeighborsRegressor": "conversion failed",
    "sklearn.semi_supervised.LabelPropagation": "no converter",
    "sklearn.semi_supervised.LabelSpreading": "no converter",
    "sklearn.svm.LinearSVC": "conversion failed",
    "sklearn.svm.NuSVR": "conversion failed",
    "sklearn.svm.SVR": "conversion failed",
}
# Allowed classes that no single-target dataset can train (the trainer's runs fail at the fit).
NOT_TRAINABLE = {f"sklearn.linear_model.{name}" for name in
                 ("MultiTaskElasticNet", "MultiTaskElasticNetCV", "MultiTaskLasso", "MultiTaskLassoCV")}
# Params a class needs to fit the test data at all (the trainer would fail the run without them).
PARAMS = {
    "sklearn.cross_decomposition.CCA": {"n_components": 1},
    "sklearn.cross_decomposition.PLSCanonical": {"n_components": 1},
    "sklearn.discriminant_analysis.QuadraticDiscriminantAnalysis": {"reg_param": 0.5},
}


def mixed_frame(rows: int = 160, seed: int = 0) -> pd.DataFrame:
    """Numbers (non-negative, some missing), a text category with missing values, an int category; as
    read from CSV."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"amount": rng.uniform(0.5, 10, rows), "count": rng.integers(0, 5, rows),
                          "size": rng.uniform(50, 150, rows), "plan": rng.choice(["basic", "plus", "pro"], rows),
                          "region": rng.integers(1, 4, rows)})
    frame.loc[rng.random(rows) < 0.1, "plan"] = None
    noise = rng.normal(0, 1, rows)
    frame["label"] = np.where(frame["amount"] + 3 * (frame["plan"] == "pro") + noise > 6, "yes", "no")
    frame["value"] = 3 * frame["amount"] + frame["count"] + 2 * frame["size"] + noise / 10
    return pd.read_csv(io.StringIO(frame.to_csv(index=False)))


def fit(path: str, frame: pd.DataFrame, categorical: list[str], params: dict | None = None):
    estimator, _, task = build_estimator(path, {})
    small = {k: v for k, v in SMALL_PARAMS.items() if k in estimator.get_params(deep=False)}
    estimator, _, task = build_estimator(path, {**small, **PARAMS.get(path, {}), **(params or {})}, seed=0)
    target = "label" if task == "classification" else "value"
    features = [c for c in frame.columns if c not in ("label", "value")]
    if path == "sklearn.isotonic.IsotonicRegression":  # one feature only, by definition
        features, categorical = ["amount"], []
    model = build_model(estimator, categorical)
    train, holdout = frame.iloc[:120], frame.iloc[120:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(train[features], train[target])
    categories = learned_categories(model)
    schema = [{"name": c, "dtype": schema_dtype(frame[c]), "categorical": c in categorical,
               **({"categories": categories[c]} if c in categories else {})} for c in features]
    return model, schema, task, holdout[features]


@pytest.mark.parametrize("path", allowed_estimator_paths())
def test_every_allowed_estimator_converts_with_parity_or_stays_skops_only_with_the_reason(path):
    if path in NOT_TRAINABLE:
        with pytest.raises(ValueError):
            fit(path, mixed_frame(), ["plan", "region"])
        return
    model, schema, task, holdout = fit(path, mixed_frame(), ["plan", "region"])

    exported = export_onnx(model, schema, task, holdout)

    if path in SKOPS_ONLY:
        assert exported.data is None
        assert SKOPS_ONLY[path] in exported.skipped, exported.skipped
        return
    assert exported.data is not None, exported.skipped
    info = OnnxInfo.model_validate(exported.info)
    assert info.parity.rows == len(holdout)
    assert info.parity.max_diff is None or info.parity.max_diff <= PARITY_TOLERANCE  # None: labels only
    if task == "classification":
        assert info.parity.labels_equal
    # what the server does: the same rows through the same class, and the same answers as scikit-learn
    predictor = OnnxPredictor(exported.data, info, [FeatureSchema.model_validate(f) for f in schema])
    columns = server_columns(holdout, predictor_schema(schema))
    predicted, _ = predictor.predict(columns, proba=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = model.predict(pd.DataFrame(columns))
    if task == "classification":
        assert predicted.dtype == expected.dtype and list(predicted) == list(expected)
    else:
        np.testing.assert_allclose(predicted, np.ravel(expected), rtol=PARITY_TOLERANCE, atol=PARITY_TOLERANCE)


def predictor_schema(schema: list[dict]) -> list[FeatureSchema]:
    return [FeatureSchema.model_validate(f) for f in schema]


TREES = ["sklearn.tree.DecisionTreeClassifier", "sklearn.ensemble.RandomForestClassifier",
         "sklearn.ensemble.ExtraTreesClassifier", "sklearn.ensemble.GradientBoostingClassifier",
         "sklearn.ensemble.HistGradientBoostingClassifier"]


@pytest.mark.parametrize("labels", ["three strings", "ints", "bools", "floats"])
@pytest.mark.parametrize("path", TREES)
def test_tree_classifiers_give_scikit_learns_labels_and_probabilities_for_every_label_type(path, labels):
    frame = mixed_frame(seed=3)
    amount = frame["amount"]
    frame["label"] = {"three strings": np.where(amount < 3, "low", np.where(amount < 7, "mid", "high")),
                      "ints": (amount > 5).astype(int) * 7 - 2,
                      "bools": amount > 5,
                      "floats": (amount > 5).astype(float)}[labels]
    model, schema, task, holdout = fit(path, frame, ["plan", "region"])

    exported = export_onnx(model, schema, task, holdout)

    assert exported.data is not None, exported.skipped
    assert exported.info["parity"]["labelsEqual"]
    assert exported.info["parity"]["maxDiff"] <= 1e-15  # float64 throughout, scikit-learn's order of sums


@pytest.mark.parametrize("path, params", [
    ("sklearn.ensemble.GradientBoostingClassifier", {}),
    ("sklearn.ensemble.GradientBoostingClassifier", {"loss": "exponential"}),
    ("sklearn.ensemble.HistGradientBoostingRegressor", {}),
    ("sklearn.ensemble.HistGradientBoostingRegressor", {"loss": "poisson"}),
    ("sklearn.ensemble.HistGradientBoostingRegressor", {"loss": "gamma"}),
])
def test_boosting_losses_and_links_keep_parity(path, params):
    model, schema, task, holdout = fit(path, mixed_frame(seed=4), ["plan"], params)

    exported = export_onnx(model, schema, task, holdout)

    assert exported.data is not None, exported.skipped
    assert exported.info["parity"]["maxDiff"] <= PARITY_TOLERANCE


def test_forests_trained_with_missing_values_send_them_where_scikit_learn_does():
    frame = mixed_frame(seed=5)
    frame.loc[frame.index % 4 == 0, "amount"] = np.nan
    for path in ("sklearn.ensemble.RandomForestClassifier", "sklearn.ensemble.HistGradientBoostingClassifier"):
        model, schema, task, holdout = fit(path, frame, ["plan"])
        exported = export_onnx(model, schema, task, holdout)
        assert exported.data is not None, exported.skipped
        assert exported.info["parity"]["maxAbsDiff"] == 0.0 or path.endswith("HistGradientBoostingClassifier")
        assert not [r for r in exported.info.get("inputRules", []) if r["values"] == "nan"]


def test_float32_thresholds_reproduce_scikit_learns_float32_comparison():
    rng = np.random.default_rng(0)
    a = rng.normal(size=5000).astype(np.float32)
    thresholds = np.concatenate([
        (a.astype(np.float64) + np.nextafter(a, np.float32(np.inf)).astype(np.float64)) / 2,  # between neighbours
        (a.astype(np.float64) + (a + np.float32(0.25)).astype(np.float64)) / 2,  # sklearn's midpoints
        rng.normal(size=5000) * 10.0 ** rng.integers(-30, 30, 5000), [0.0, -0.0, 1.0, 3.4e38, -3.4e38]])
    w = float32_thresholds(thresholds)
    for x in (w, np.nextafter(w, np.inf), np.nextafter(w, -np.inf), thresholds, np.nextafter(thresholds, np.inf),
              np.nextafter(thresholds, -np.inf)):
        with np.errstate(over="ignore"):
            scikit_learn = x.astype(np.float32).astype(np.float64) <= thresholds
        assert np.array_equal(x <= w, scikit_learn)


def test_numeric_categories_are_compared_exactly_and_a_learned_missing_category_is_found():
    frame = mixed_frame(seed=6)
    frame["grade"] = np.where(frame.index % 5 == 0, np.nan, frame["region"] * 1.0)  # float category with NaN
    model, schema, task, holdout = fit("sklearn.linear_model.LogisticRegression", frame, ["plan", "region", "grade"])
    exported = export_onnx(model, schema, task, holdout)
    info = OnnxInfo.model_validate(exported.info)
    predictor = OnnxPredictor(exported.data, info, predictor_schema(schema))
    rows = server_columns(holdout.iloc[:4], predictor_schema(schema))
    rows["region"] = np.array([1.0, 1.5, 3.0, 9.0])  # 1.5 and 9 are unseen: all zeros, not category 1
    rows["grade"] = np.array([np.nan, 2.0, 2.5, 1.0])
    rows["plan"] = np.array([None, "pro", "never seen", "nan"], dtype=object)

    predicted, probabilities = predictor.predict(rows, proba=True)

    expected = model.predict_proba(pd.DataFrame(rows))
    np.testing.assert_allclose(probabilities, expected, rtol=0, atol=1e-12)
    assert list(predicted) == list(model.predict(pd.DataFrame(rows)))


def test_text_categories_no_served_text_can_equal_never_match():
    frame = mixed_frame(seed=7)
    frame["plan"] = frame["plan"].fillna("")  # a learned "" (Parquet keeps it), which the server sends as missing
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    frame = pd.read_parquet(io.BytesIO(buffer.getvalue()))
    model, schema, task, holdout = fit("sklearn.linear_model.LogisticRegression", frame, ["plan"])
    assert "" in schema[3]["categories"]

    exported = export_onnx(model, schema, task, holdout)

    assert exported.data is not None, exported.skipped
    predictor = OnnxPredictor(exported.data, OnnxInfo.model_validate(exported.info), predictor_schema(schema))
    rows = server_columns(holdout.iloc[:2], predictor_schema(schema))
    rows["plan"] = np.array([None, "basic"], dtype=object)
    _, probabilities = predictor.predict(rows, proba=True)
    np.testing.assert_allclose(probabilities, model.predict_proba(pd.DataFrame(rows)), atol=1e-12)


def test_values_scikit_learn_refuses_are_refused_by_the_onnx_path_with_its_error():
    model, schema, task, holdout = fit("sklearn.linear_model.LogisticRegression", mixed_frame(), ["plan", "region"])
    exported = export_onnx(model, schema, task, holdout)
    predictor = OnnxPredictor(exported.data, OnnxInfo.model_validate(exported.info), predictor_schema(schema))
    for column, value in (("amount", np.nan), ("size", np.inf), ("region", -np.inf)):
        rows = server_columns(holdout.iloc[:3], predictor_schema(schema))
        rows[column] = rows[column].copy()
        rows[column][1] = value
        with pytest.raises(ValueError) as scikit_learn:
            model.predict(pd.DataFrame(rows))
        with pytest.raises(ValueError) as onnx:
            predictor.predict(rows, proba=False)
        assert str(onnx.value) == str(scikit_learn.value)


def test_a_model_without_a_converter_is_skops_only_with_the_reason():
    model, schema, task, holdout = fit("sklearn.dummy.DummyClassifier", mixed_frame(), ["plan"])

    exported = export_onnx(model, schema, task, holdout)

    assert exported.data is None and exported.info == {
        "skipped": "skl2onnx has no converter for DummyClassifier"}


def test_a_model_failing_parity_is_skops_only_with_the_figures():
    model, schema, task, holdout = fit("sklearn.discriminant_analysis.LinearDiscriminantAnalysis", mixed_frame(),
                                       ["plan"])

    exported = export_onnx(model, schema, task, holdout)

    assert exported.data is None
    assert exported.skipped.startswith("parity failed: the largest difference from scikit-learn is ")
    assert exported.info["parity"]["maxDiff"] > PARITY_TOLERANCE


def test_the_graph_takes_one_input_per_feature_and_names_its_outputs_after_the_servers():
    model, schema, task, holdout = fit("sklearn.ensemble.RandomForestClassifier", mixed_frame(), ["plan", "region"])
    graph = check_onnx_file(export_onnx(model, schema, task, holdout).data)
    elem = {i.name: (i.type.tensor_type.elem_type, [d.dim_value or None for d in i.type.tensor_type.shape.dim])
            for i in graph.graph.input}
    assert elem == {"amount": (11, [None, 1]), "count": (11, [None, 1]), "size": (11, [None, 1]),
                    "plan": (8, [None, 1]), "region": (11, [None, 1])}  # DOUBLE, STRING
    assert [o.name for o in graph.graph.output] == ["predict", "predict_proba"]
    assert {o.domain for o in graph.opset_import} <= {"", "ai.onnx.ml"}


def test_an_ensemble_too_large_for_a_server_is_skops_only(monkeypatch):
    from modelloop.training import onnx_trees

    monkeypatch.setattr(onnx_trees, "MAX_NODES", 10)
    model, schema, task, holdout = fit("sklearn.ensemble.RandomForestClassifier", mixed_frame(), ["plan"])

    exported = export_onnx(model, schema, task, holdout)

    assert exported.data is None
    assert exported.skipped.startswith("RandomForestClassifier: ") and "tree nodes over 2 target(s), more than 10" in \
        exported.skipped
