"""train(): a spec and a dataset become a complete, checksummed, immutable model version."""
from __future__ import annotations

import hashlib
import math

import pandas as pd
import pytest

from modelloop.artifacts import ArtifactMetadata, load_model, open_store
from modelloop.training import train
from modelloop.training.estimator import build_estimator
from modelloop.training.evaluate import PREDICT_IS_MOST_PROBABLE, validation_predictions
from modelloop.training.errors import (
    DatasetInvalidError, DatasetUnreadableError, FitError, SpecError, VersionExistsError,
)

IDENTITY = {"name": "churn", "namespace": "team-a", "uid": "0b9c-11", "generation": 3, "run": "churn-v1"}
CONTRACT_KEYS = {"format", "version", "created", "model", "training", "dataset", "estimator", "task", "libraries",
                 "metric", "metrics", "schema", "reference", "predictionReference", "onnx"}


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize("task", ["classification", "regression"])
def test_classifier_and_regressor_train_into_a_complete_version(place, fmt, task, churn, prices, to_bytes, spec_for):
    frame, target = (churn, "churned") if task == "classification" else (prices, "price")
    raw = to_bytes(frame, fmt)
    dataset_uri = place.put(f"train.{fmt}", raw)
    spec = spec_for(dataset_uri, target, place.output(),
                    estimator="classifier" if task == "classification" else "regressor")

    metadata = train(spec, version=1, identity=IDENTITY)

    # classifiers with predict_proba also ship the hold-out calibration of their confidence (docs/cbpe.md)
    assert set(metadata) == CONTRACT_KEYS | ({"calibration"} if task == "classification" else set())
    ArtifactMetadata.model_validate(metadata)
    if task == "classification":
        assert metadata["calibration"]["method"] in ("isotonic", "identity")
        assert metadata["calibration"]["rows"] == math.ceil(len(frame) * 0.25)
    store = open_store(place.output())
    assert store.versions() == [1] and store.read_metadata(1) == metadata
    model_bytes = store.read_file(1, "model.skops")
    assert metadata["model"]["sha256"] == hashlib.sha256(model_bytes).hexdigest()
    assert metadata["model"]["size"] == len(model_bytes)
    assert metadata["model"]["trustedTypes"] == ["sklearn.tree._tree.Tree"]
    onnx_bytes = store.read_file(1, "model.onnx")
    assert metadata["onnx"]["file"] == "model.onnx"
    assert metadata["onnx"]["sha256"] == hashlib.sha256(onnx_bytes).hexdigest()
    assert metadata["onnx"]["size"] == len(onnx_bytes)
    assert metadata["onnx"]["parity"]["rows"] == math.ceil(len(frame) * 0.25)
    assert metadata["onnx"]["parity"]["maxDiff"] <= metadata["onnx"]["parity"]["tolerance"] == 1e-6
    assert metadata["dataset"] == {"uri": dataset_uri, "format": fmt, "sha256": hashlib.sha256(raw).hexdigest(),
                                   "rows": len(frame)}
    assert metadata["training"] == IDENTITY
    assert metadata["task"] == task
    assert metadata["estimator"]["params"] == {"n_estimators": 5, "max_depth": 4, "random_state": 7}
    assert set(metadata["libraries"]) >= {"python", "scikit-learn", "numpy", "skops"}
    standard = {"accuracy", "f1", "roc_auc"} if task == "classification" else {"r2", "rmse", "mae"}
    assert set(metadata["metrics"]) == standard
    assert metadata["metric"] == {"name": "accuracy" if task == "classification" else "r2",
                                  "value": metadata["metrics"]["accuracy" if task == "classification" else "r2"]}

    # a server builds a DataFrame with the schema's feature columns and predicts from it
    loaded = load_model(store.version_uri(1))
    columns = [f["name"] for f in metadata["schema"]["features"]]
    predictions = loaded.model.predict(frame[columns].head(5))
    assert len(predictions) == 5


def test_a_model_without_an_onnx_converter_trains_into_a_skops_only_version_served_by_scikit_learn(
        local, churn, to_bytes, spec_for):
    spec = spec_for(local.put("churn.csv", to_bytes(churn, "csv")), "churned", local.output(),
                    estimator={"class": "sklearn.neighbors.NearestCentroid"})

    metadata = train(spec, version=1, identity={})

    assert metadata["onnx"] == {"skipped": "skl2onnx has no converter for NearestCentroid"}
    store = open_store(local.output())
    assert not (local.root / "models" / "v1" / "model.onnx").exists()
    loaded = load_model(store.version_uri(1), runtime="auto")
    assert loaded.runtime == "sklearn"
    assert set(loaded.model.predict(churn.drop(columns="churned").head(5))) <= {"yes", "no"}


def test_schema_records_types_categories_and_classes(local, churn, to_bytes, spec_for):
    spec = spec_for(local.put("churn.csv", to_bytes(churn, "csv")), "churned", local.output())
    schema = train(spec, version=1, identity={})["schema"]

    assert schema["features"] == [
        {"name": "tenure", "dtype": "float64", "categorical": False},
        {"name": "spend", "dtype": "float64", "categorical": False},
        {"name": "plan", "dtype": "string", "categorical": True, "categories": ["basic", "plus", "pro"]},
    ]
    assert schema["target"] == {"name": "churned", "dtype": "string", "classes": ["no", "yes"]}


def test_reference_sketches_cover_training_features_and_validation_predictions(local, churn, to_bytes, spec_for):
    spec = spec_for(local.put("churn.csv", to_bytes(churn, "csv")), "churned", local.output())
    metadata = train(spec, version=1, identity={})

    validation_rows = math.ceil(len(churn) * 0.25)
    reference, predicted = metadata["reference"], metadata["predictionReference"]
    assert reference["format"] == predicted["format"] == "modelloop.sketch/v1"
    assert reference["rows"] == len(churn) - validation_rows
    assert [f["name"] for f in reference["features"]] == ["tenure", "spend", "plan"]
    assert [f["kind"] for f in reference["features"]] == ["numeric", "numeric", "categorical"]
    assert predicted["rows"] == validation_rows
    assert [(f["name"], f["kind"]) for f in predicted["features"]] == [("churned", "categorical")]


def test_selected_features_and_declared_categoricals_are_used(local, prices, to_bytes, spec_for):
    spec = spec_for(local.put("p.parquet", to_bytes(prices, "parquet")), "price", local.output(),
                    estimator="regressor", features=["rooms", "size"], categorical=["rooms"])
    metadata = train(spec, version=1, identity={})

    assert [(f["name"], f["categorical"]) for f in metadata["schema"]["features"]] == [("rooms", True), ("size", False)]
    model = load_model(f"{local.output()}/v1").model
    unseen_rooms = pd.DataFrame({"rooms": [99], "size": [80.0]})
    assert model.predict(unseen_rooms).shape == (1,)  # unknown categories are ignored, not an error


def test_chosen_metric_is_primary_and_added_to_the_standard_set(local, churn, to_bytes, spec_for):
    spec = spec_for(local.put("churn.csv", to_bytes(churn, "csv")), "churned", local.output())
    spec["validation"]["metric"] = "log_loss"
    metadata = train(spec, version=1, identity={})

    assert metadata["metric"]["name"] == "log_loss"
    assert set(metadata["metrics"]) == {"accuracy", "f1", "roc_auc", "log_loss"}


def test_pvc_dataset_and_output_resolve_under_the_pvc_root(tmp_path, monkeypatch, churn, to_bytes, spec_for):
    monkeypatch.setenv("MODELLOOP_PVC_ROOT", str(tmp_path))
    (tmp_path / "data-claim").mkdir()
    (tmp_path / "data-claim" / "churn.parquet").write_bytes(to_bytes(churn, "parquet"))
    spec = spec_for("pvc://data-claim/churn.parquet", "churned", "pvc://models-claim/churn")
    metadata = train(spec, version=1, identity={})

    assert metadata["dataset"]["uri"] == "pvc://data-claim/churn.parquet"
    assert (tmp_path / "models-claim" / "churn" / "v1" / "metadata.json").is_file()
    assert load_model("pvc://models-claim/churn/v1").metadata.version == 1


def test_a_class_too_rare_to_stratify_falls_back_to_a_random_split(local, churn, to_bytes, spec_for):
    churn.loc[0, "churned"] = "maybe"  # one member: cannot be on both sides of a stratified split
    spec = spec_for(local.put("churn.csv", to_bytes(churn, "csv")), "churned", local.output())
    metadata = train(spec, version=1, identity={})
    assert metadata["schema"]["target"]["classes"] == ["maybe", "no", "yes"]


def test_an_undefined_primary_metric_fails_the_run(local, churn, to_bytes, spec_for):
    churn.loc[0, "churned"] = "maybe"  # one-member class: on one side of the split only, so no roc_auc
    spec = spec_for(local.put("churn.csv", to_bytes(churn, "csv")), "churned", local.output())
    spec["validation"]["metric"] = "roc_auc"
    with pytest.raises(FitError, match="spec.validation.metric 'roc_auc' is undefined on the validation split"):
        train(spec, version=1, identity={})


def test_a_second_run_writes_v2_and_leaves_v1_byte_identical(place, churn, to_bytes, spec_for):
    spec = spec_for(place.put("churn.csv", to_bytes(churn, "csv")), "churned", place.output())
    train(spec, version=1, identity={"run": "churn-v1"})
    store = open_store(place.output())
    v1 = (store.read_file(1, "model.skops"), store.read_file(1, "metadata.json"))

    spec["estimator"]["params"]["n_estimators"] = 7
    train(spec, version=2, identity={"run": "churn-v2"})

    assert store.versions() == [1, 2]
    assert (store.read_file(1, "model.skops"), store.read_file(1, "metadata.json")) == v1
    assert store.read_metadata(2)["estimator"]["params"]["n_estimators"] == 7


def test_an_existing_version_is_refused_before_any_training(local, churn, to_bytes, spec_for, monkeypatch):
    spec = spec_for(local.put("churn.csv", to_bytes(churn, "csv")), "churned", local.output())
    train(spec, version=1, identity={})
    v1 = open_store(local.output()).read_file(1, "metadata.json")

    import modelloop.training.trainer as trainer
    monkeypatch.setattr(trainer, "read_dataset", lambda *a: pytest.fail("the dataset was read"))
    with pytest.raises(VersionExistsError, match=r"/v1 already exists"):
        train(spec, version=1, identity={})
    assert open_store(local.output()).read_file(1, "metadata.json") == v1


def dataset(**fields):
    return lambda spec: spec["dataset"].update(fields)


def estimator(class_path, **params):
    return lambda spec: spec["estimator"].update({"class": class_path, "params": params})


def params(**values):
    return lambda spec: spec["estimator"]["params"].update(values)


@pytest.mark.parametrize("change, error, message", [
    pytest.param(dataset(target="churn"), DatasetInvalidError,
                 "spec.dataset.target 'churn' is not a column of file://.*; columns: tenure, spend, plan, churned",
                 id="target-missing"),
    pytest.param(dataset(features=["tenure", "age"]), DatasetInvalidError,
                 "spec.dataset.features lists columns missing from .*: age", id="feature-missing"),
    pytest.param(dataset(categorical=["colour"]), DatasetInvalidError,
                 "spec.dataset.categorical lists columns that are not features: colour",
                 id="categorical-not-a-feature"),
    pytest.param(estimator("os.system"), SpecError,
                 r"spec.estimator.class 'os.system' is not an allowed estimator; allowed: .*sklearn\.\*",
                 id="estimator-outside-sklearn"),
    pytest.param(estimator("sklearn.utils.Bunch"), SpecError,
                 "spec.estimator.class 'sklearn.utils.Bunch' is not a scikit-learn estimator class",
                 id="estimator-not-an-estimator"),
    pytest.param(estimator("sklearn.tree._classes.DecisionTreeClassifier"), SpecError,
                 "spec.estimator.class .* is not an allowed estimator", id="estimator-private-module"),
    pytest.param(estimator("sklearn.cluster.KMeans"), SpecError, "is neither a classifier nor a regressor",
                 id="estimator-unsupervised"),
    pytest.param(estimator("sklearn.ensemble.NoSuchForest"), SpecError, "sklearn.ensemble has no class NoSuchForest",
                 id="estimator-unknown-class"),
    pytest.param(params(n_trees=10), SpecError,
                 r"spec.estimator.params: unknown parameter\(s\) n_trees for sklearn.ensemble.RandomForestClassifier; "
                 "valid: ", id="params-unknown"),
    pytest.param(params(n_estimators="many"), SpecError,
                 "spec.estimator.params are invalid for .*'n_estimators' parameter", id="params-invalid-value"),
    pytest.param(estimator("sklearn.linear_model.LogisticRegression", C=-1.0), SpecError, "'C' parameter",
                 id="params-out-of-range"),
    pytest.param(lambda s: s["validation"].update(metric="rmse"), SpecError,
                 "spec.validation.metric 'rmse' does not apply to .*a classification estimator",
                 id="metric-of-the-other-task"),
    pytest.param(lambda s: s["output"].update(uri="ftp://host/models"), SpecError, "spec.output.uri",
                 id="output-scheme"),
    pytest.param(lambda s: s["dataset"].update(uri=s["dataset"]["uri"].replace("churn.csv", "gone.csv")),
                 DatasetUnreadableError, "spec.dataset.uri: file://.*gone.csv: no such file", id="dataset-missing"),
    pytest.param(lambda s: s["dataset"].update(uri=s["dataset"]["uri"] + ".bak"), SpecError,
                 "spec.dataset.format is not set and cannot be inferred", id="format-unknown"),
    pytest.param(dataset(format="parquet"), DatasetUnreadableError, "cannot be parsed as parquet",
                 id="dataset-unparsable"),
    pytest.param(estimator("sklearn.linear_model.LinearRegression"), DatasetInvalidError,
                 "target column 'churned' .* has type str; a regressor needs a numeric target",
                 id="regressor-on-text-target"),
])
def test_each_invalid_input_fails_with_a_reason_naming_the_field(local, churn, to_bytes, spec_for, change, error,
                                                                 message):
    spec = spec_for(local.put("churn.csv", to_bytes(churn, "csv")), "churned", local.output())
    change(spec)
    with pytest.raises(error, match=message):
        train(spec, version=1, identity={})
    assert open_store(local.output()).versions() == []


def test_unusable_feature_types_are_refused_before_fitting(local, churn, to_bytes, spec_for):
    churn["signup"] = pd.date_range("2026-01-01", periods=len(churn), freq="h")
    spec = spec_for(local.put("churn.parquet", to_bytes(churn, "parquet")), "churned", local.output())
    with pytest.raises(DatasetInvalidError, match=r"types a model cannot use: signup \(datetime64"):
        train(spec, version=1, identity={})


def test_a_classifier_on_a_continuous_target_is_refused(local, prices, to_bytes, spec_for):
    spec = spec_for(local.put("p.csv", to_bytes(prices, "csv")), "price", local.output())
    with pytest.raises(DatasetInvalidError, match="holds continuous numbers; a classifier needs class labels"):
        train(spec, version=1, identity={})


def test_an_estimator_that_fails_to_fit_is_reported(local, churn, to_bytes, spec_for):
    churn.loc[::10, "tenure"] = None  # LogisticRegression does not accept missing values
    spec = spec_for(local.put("churn.csv", to_bytes(churn, "csv")), "churned", local.output(),
                    estimator={"class": "sklearn.linear_model.LogisticRegression", "params": {}})
    with pytest.raises(FitError, match="fitting sklearn.linear_model.LogisticRegression failed: ValueError: .*NaN"):
        train(spec, version=1, identity={})


QUICK_PARAMS = {"sklearn.ensemble.HistGradientBoostingClassifier": {"max_iter": 10},
                "sklearn.ensemble.RandomForestClassifier": {"n_estimators": 10},
                "sklearn.ensemble.ExtraTreesClassifier": {"n_estimators": 10}}


@pytest.mark.parametrize("class_path", sorted(PREDICT_IS_MOST_PROBABLE))
@pytest.mark.parametrize("n_classes", [2, 3])
def test_predictions_taken_from_probabilities_equal_predict(class_path, n_classes):
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=600, n_features=6, n_informative=4, n_classes=n_classes, random_state=1)
    model, _, _ = build_estimator(class_path, QUICK_PARAMS.get(class_path, {}), seed=0)
    model.fit(x[:400], y[:400])
    predictions, probabilities = validation_predictions(model, class_path, x[400:])
    assert probabilities is not None
    assert predictions.tolist() == model.predict(x[400:]).tolist()
