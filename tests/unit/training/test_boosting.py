"""XGBoost and LightGBM: trained by the real trainer like scikit-learn's estimators, stored in their own model
formats (never skops), shipped with a model.onnx of parity 1e-6, and served through it by the model server."""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest

from modelloop.artifacts import ArtifactMetadata, OnnxOnlyError, load_model, open_store
from modelloop.training import train
from modelloop.training.errors import FitError, SpecError
from modelloop_server.cli import load_served_model
from modelloop_server.schema import RequestLimits
from modelloop_server.v2 import decode_infer, encode_infer

import orjson

BOOSTING = {
    "xgboost.XGBClassifier": ("model.xgboost.json", "xgboost-json", "xgboost"),
    "xgboost.XGBRegressor": ("model.xgboost.json", "xgboost-json", "xgboost"),
    "lightgbm.LGBMClassifier": ("model.lightgbm.txt", "lightgbm-text", "lightgbm"),
    "lightgbm.LGBMRegressor": ("model.lightgbm.txt", "lightgbm-text", "lightgbm"),
}
PARAMS = {"n_estimators": 30, "max_depth": 4}


def _task_data(class_path, churn, prices):
    return (churn, "churned", "classification") if class_path.endswith("Classifier") else (prices, "price", "regression")


@pytest.mark.parametrize("class_path", sorted(BOOSTING))
def test_a_boosting_estimator_trains_into_a_native_version_with_onnx_parity(local, class_path, churn, prices,
                                                                            to_bytes, spec_for):
    frame, target, task = _task_data(class_path, churn, prices)  # a text category: one-hot encoded first
    spec = spec_for(local.put("train.csv", to_bytes(frame, "csv")), target, local.output(),
                    estimator={"class": class_path, "params": PARAMS})

    metadata = train(spec, version=1, identity={"name": "boost"})

    file, model_format, library = BOOSTING[class_path]
    ArtifactMetadata.model_validate(metadata)
    store = open_store(local.output())
    native = store.read_file(1, file)
    assert metadata["model"] == {"file": file, "format": model_format, "size": len(native),
                                 "sha256": hashlib.sha256(native).hexdigest(), "trustedTypes": []}
    assert not (local.root / "models" / "v1" / "model.skops").exists()
    assert library in metadata["libraries"] and "skops" not in metadata["libraries"]
    assert metadata["estimator"] == {"class": class_path, "params": {
        **PARAMS, "random_state": 7, **({"verbose": -1} if library == "lightgbm" else {})}}
    assert metadata["task"] == task
    onnx = store.read_file(1, "model.onnx")
    assert metadata["onnx"]["sha256"] == hashlib.sha256(onnx).hexdigest()
    parity = metadata["onnx"]["parity"]
    assert parity["rows"] == math.ceil(len(frame) * 0.25) and parity["probeRows"] > 0
    assert parity["maxDiff"] <= parity["tolerance"] == 1e-6
    if task == "classification":
        assert parity["labelsEqual"] is True
        assert metadata["schema"]["target"]["classes"] == ["no", "yes"]  # XGBoost learns them encoded
        assert metadata["calibration"]["rows"] == parity["rows"]
        assert set(metadata["metrics"]) == {"accuracy", "f1", "roc_auc"}
        assert metadata["metrics"]["accuracy"] > 0.8
    else:
        assert set(metadata["metrics"]) == {"r2", "rmse", "mae"} and metadata["metrics"]["r2"] > 0.9
    assert {f["name"] for f in metadata["reference"]["features"]} == {"tenure", "spend", "plan"} \
        if task == "classification" else {"size", "rooms", "district"}

    loaded = load_model(store.version_uri(1), runtime="auto")
    assert loaded.runtime == "onnx" and loaded.model is None
    with pytest.raises(OnnxOnlyError, match="served through model.onnx only; use runtime auto or onnx"):
        load_model(store.version_uri(1), runtime="sklearn")


def _native_predictions(class_path: str, data: bytes, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """What the library itself answers with the stored native model: values, or (class index, probabilities)."""
    if class_path.startswith("xgboost."):
        import xgboost

        booster = xgboost.Booster()
        booster.load_model(bytearray(data))
        output = booster.inplace_predict(x)  # as XGBClassifier.predict does (a DMatrix refuses 1e39)
    else:
        import lightgbm

        output = lightgbm.Booster(model_str=data.decode()).predict(x)
    if class_path.endswith("Regressor"):
        return output, None
    probabilities = np.column_stack([1 - output, output]) if output.ndim == 1 else output
    return (output > 0.5).astype(int) if output.ndim == 1 else np.argmax(output, axis=1), probabilities


@pytest.mark.parametrize("class_path", sorted(BOOSTING))
def test_the_model_server_answers_v2_as_the_stored_native_model_does(local, class_path, churn, prices, to_bytes,
                                                                     spec_for):
    frame, target, task = _task_data(class_path, churn, prices)
    frame = frame.drop(columns=["plan", "district"], errors="ignore")  # numbers only: the native model sees them as is
    frame.loc[frame.index % 9 == 0, frame.columns[0]] = np.nan
    spec = spec_for(local.put("train.csv", to_bytes(frame, "csv")), target, local.output(),
                    estimator={"class": class_path, "params": PARAMS})
    metadata = train(spec, version=1, identity={"name": "boost"})
    store = open_store(local.output())
    metadata_sha256 = hashlib.sha256((local.root / "models" / "v1" / "metadata.json").read_bytes()).hexdigest()

    served = load_served_model(store.version_uri(1), "boost", model_sha256=metadata["model"]["sha256"],
                               metadata_sha256=metadata_sha256, runtime="auto")
    served.warm_up()

    names = [f["name"] for f in metadata["schema"]["features"]]
    x = np.array([[12.0, 60.0], [np.nan, 5.0], [3.5, 1e6], [-1e39, 0.0], [1e39, 42.0]])[:, :len(names)]
    body = {"parameters": {"predict_proba": task == "classification"}, "inputs": [
        {"name": name, "datatype": "FP64", "shape": [len(x)], "data": [None if v != v else float(v) for v in x[:, j]]}
        for j, name in enumerate(names)]}
    request = decode_infer(orjson.dumps(body), served, RequestLimits(max_rows=100, max_string_length=100,
                                                                      max_values=10_000))
    predictions, probabilities = served.predict(request.rows, proba=request.proba)
    answer = orjson.loads(encode_infer(served, request, predictions, probabilities)[0])
    outputs = {o["name"]: o for o in answer["outputs"]}

    assert served.runtime == "onnx"
    expected, expected_proba = _native_predictions(class_path, store.read_file(1, BOOSTING[class_path][0]),
                                                   np.asarray(request.rows if isinstance(request.rows, np.ndarray)
                                                              else np.column_stack([request.rows[n] for n in names])))
    if task == "regression":
        np.testing.assert_allclose(outputs["predict"]["data"], expected, rtol=1e-6, atol=1e-6)
    else:
        classes = metadata["schema"]["target"]["classes"]
        assert outputs["predict"]["data"] == [classes[i] for i in expected]
        np.testing.assert_allclose(np.reshape(outputs["predict_proba"]["data"], (len(x), -1)), expected_proba,
                                   rtol=0, atol=1e-6)


@pytest.mark.parametrize("class_path, params, message", [
    ("xgboost.XGBClassifier", {"booster": "dart"}, "spec.estimator.params.booster 'dart' is not supported"),
    ("lightgbm.LGBMRegressor", {"boosting_type": "rf"}, "spec.estimator.params.boosting_type 'rf' is not supported"),
    ("lightgbm.LGBMClassifier", {"linear_tree": True}, "unknown parameter.* linear_tree"),
])
def test_params_the_onnx_export_cannot_reproduce_are_refused_before_reading_data(local, class_path, params, message,
                                                                                 spec_for):
    spec = spec_for("file:///nowhere/train.csv", "y", local.output(), estimator={"class": class_path, "params": params})
    with pytest.raises(SpecError, match=message):
        train(spec, version=1, identity={})


def test_a_boosting_model_without_onnx_parity_is_refused_and_no_version_is_written(local, churn, to_bytes,
                                                                                   spec_for):
    spec = spec_for(local.put("train.csv", to_bytes(churn, "csv")), "churned", local.output(), estimator={
        "class": "xgboost.XGBClassifier", "params": {"objective": "binary:hinge"}})

    with pytest.raises(FitError, match="xgboost.XGBClassifier models are served through model.onnx only, and this "
                                       "one has none: XGBClassifier: objective binary:hinge is not converted"):
        train(spec, version=1, identity={})
    assert open_store(local.output()).versions() == []
    assert not Path(local.root / "models" / "v1").exists()
