"""The same version served by onnxruntime (model.onnx) and by scikit-learn (model.skops) answers the same,
over real HTTP, for V2 and V1; runtime onnx refuses a version without model.onnx, naming the field."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pandas as pd
import pytest

from modelloop_server.cli import load_served_model

from .conftest import Artifact, ServerProcess, churn_frame, refused_at_start, train_version, running

HGB_REGRESSOR = {"class": "sklearn.ensemble.HistGradientBoostingRegressor", "params": {"max_iter": 20}}


def houses_frame(rows: int = 300, seed: int = 3) -> pd.DataFrame:
    """Regression with a text category and missing numbers."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"size": rng.uniform(30, 150, rows), "rooms": rng.integers(1, 6, rows).astype(float),
                          "district": rng.choice(["north", "south", "harbour"], rows)})
    frame["price"] = 3.0 * frame["size"] + 10 * frame["rooms"] + 50 * (frame["district"] == "north") \
        + rng.normal(0, 5, rows)
    frame.loc[frame.index % 7 == 0, "rooms"] = np.nan
    return frame


@pytest.fixture(scope="module")
def versions(artifacts: dict[str, Artifact], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Artifact]:
    root = tmp_path_factory.mktemp("runtime-artifacts")
    return {"churn": artifacts["churn"],  # RandomForestClassifier; plan (text) and region (int) categorical
            "houses": Artifact(*train_version(root, "houses", houses_frame(), "price", HGB_REGRESSOR)),
            "centroids": Artifact(*train_version(root, "centroids", churn_frame(), "churned",
                                                 {"class": "sklearn.neighbors.NearestCentroid"}))}


@pytest.fixture(scope="module")
def pairs(versions: dict[str, Artifact], tmp_path_factory: pytest.TempPathFactory):
    """For churn and houses, one server per runtime (all started at once)."""
    logs = tmp_path_factory.mktemp("runtime-logs")
    started = {(name, runtime): ServerProcess(["--model-uri", versions[name].uri, "--model-name", name,
                                                "--runtime", runtime, "--max-batch-wait-ms", "0"],
                                               logs / f"{name}-{runtime}.log")
               for name in ("churn", "houses") for runtime in ("onnx", "sklearn")}
    with running(started):
        yield started


CHURN_V2 = {"id": "r-1", "parameters": {"predict_proba": True}, "inputs": [
    {"name": "tenure", "datatype": "FP64", "shape": [5], "data": [12.0, 3.5, None, 20.0, 8.25]},
    {"name": "spend", "datatype": "FP64", "shape": [5], "data": [60.0, 10.0, 75.5, 1e6, 0.0]},
    {"name": "plan", "datatype": "BYTES", "shape": [5], "data": ["basic", "pro", "never-seen", None, ""]},
    {"name": "region", "datatype": "INT64", "shape": [5], "data": [1, 2, 3, 9, 2]}]}
CHURN_V1 = [
    {"instances": [{"tenure": 12.0, "spend": 60.0, "plan": "plus", "region": 1},
                   {"tenure": 2.0, "spend": 300.0, "plan": None, "region": 4}]},
    {"inputs": {"tenure": [12.0, 30.0], "spend": [60.0, 5.0], "plan": ["basic", "pro"], "region": [3, 1]}}]
HOUSES_V2 = {"inputs": [
    {"name": "size", "datatype": "FP64", "shape": [4], "data": [50.0, 149.5, 80.0, 1e5]},
    {"name": "rooms", "datatype": "FP64", "shape": [4], "data": [2.0, None, 5.0, 3.0]},
    {"name": "district", "datatype": "BYTES", "shape": [4], "data": ["north", "harbour", "unknown", None]}]}
HOUSES_V1 = [{"instances": [[50.0, 2.0, "south"], [120.0, None, "north"]]},
             {"inputs": [{"size": 70.0, "rooms": 3.0, "district": "harbour"}]}]


def post(server: ServerProcess, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    """Status and body, sent with one request id so that two servers' answers compare whole."""
    response = httpx.post(f"{server.url}{path}", content=orjson.dumps(body),
                          headers={"content-type": "application/json", "x-request-id": "same-request"}, timeout=10)
    return response.status_code, response.json()


@pytest.mark.parametrize("name, v2, v1", [("churn", CHURN_V2, CHURN_V1), ("houses", HOUSES_V2, HOUSES_V1)])
def test_onnx_and_sklearn_runtimes_give_identical_v2_and_v1_answers(pairs, name, v2, v1):
    onnx, sklearn = pairs[(name, "onnx")], pairs[(name, "sklearn")]
    for body in (v2, {**v2, "outputs": [{"name": "predict"}]}):
        answers = [post(server, f"/v2/models/{name}/infer", body) for server in (onnx, sklearn)]
        assert answers[0][0] == 200 and answers[0] == answers[1]  # same labels, values, datatypes, shapes
    for body in v1:
        answers = [post(server, f"/v1/models/{name}:predict", body) for server in (onnx, sklearn)]
        assert answers[0][0] == 200 and answers[0] == answers[1]


def test_the_classifier_answers_labels_and_probabilities_in_the_order_of_classes(pairs, versions):
    status, answer = post(pairs[("churn", "onnx")], "/v2/models/churn/infer", CHURN_V2)
    predict, proba = answer["outputs"]
    assert status == 200 and predict["datatype"] == "BYTES" and set(predict["data"]) <= {"yes", "no"}
    assert proba["parameters"]["classes"] == versions["churn"].metadata["schema"]["target"]["classes"]
    best = np.argmax(np.reshape(proba["data"], proba["shape"]), axis=1)
    assert [proba["parameters"]["classes"][i] for i in best] == predict["data"]


def test_rows_scikit_learn_refuses_are_refused_alike_on_both_runtimes(pairs):
    body = {"inputs": [{**i, "data": [None if i["name"] == "tenure" else v for v in i["data"]]}
                       for i in CHURN_V2["inputs"]]}  # forests accept missing numbers: both answer
    assert post(pairs[("churn", "onnx")], "/v2/models/churn/infer", body) == \
        post(pairs[("churn", "sklearn")], "/v2/models/churn/infer", body)
    binary = CHURN_V2["inputs"][0]
    raw = np.array([1.0, np.inf, 3.0, 4.0, 5.0]).tobytes()
    header = orjson.dumps({"inputs": [{**binary, "data": None, "parameters": {"binary_data_size": len(raw)}},
                                      *CHURN_V2["inputs"][1:]]})
    answers = []
    for runtime in ("onnx", "sklearn"):
        response = httpx.post(f"{pairs[('churn', runtime)].url}/v2/models/churn/infer", content=header + raw,
                              headers={"content-type": "application/octet-stream",
                                       "inference-header-content-length": str(len(header))})
        answers.append((response.status_code, response.json()))
    assert answers[0] == answers[1] and answers[0][0] == 422
    assert "infinity" in answers[0][1]["error"]


def test_model_metadata_and_metrics_say_which_runtime_serves(pairs):
    for runtime in ("onnx", "sklearn"):
        server = pairs[("churn", runtime)]
        metadata = httpx.get(f"{server.url}/v2/models/churn").json()
        assert metadata["parameters"]["runtime"] == runtime
        assert server.metric("modelloop_server_model_info", {"runtime": runtime}) == 1.0
        ready = [line for line in server.log.read_text().splitlines() if "event=model.ready" in line]
        assert f"runtime={runtime}" in ready[0]


def test_a_skops_only_version_is_served_by_scikit_learn_on_auto(versions):
    centroids = versions["centroids"]
    assert centroids.metadata["onnx"] == {"skipped": "skl2onnx has no converter for NearestCentroid"}
    model = load_served_model(centroids.uri, None, runtime="auto")
    model.warm_up()
    assert model.runtime == "sklearn"
    predictions, _ = model.predict(model.example_rows(), proba=False)
    assert set(predictions) <= {"yes", "no"}


def test_runtime_onnx_on_a_version_without_model_onnx_refuses_to_start_naming_the_field(versions, tmp_path: Path):
    server = ServerProcess(["--model-uri", versions["centroids"].uri], tmp_path / "server.log",
                           env={"MODELLOOP_RUNTIME": "onnx"}).start()
    line, termination = refused_at_start(server)
    assert "spec.server.runtime" in line and "skl2onnx has no converter for NearestCentroid" in line
    assert termination.startswith("ModelRefused: OnnxUnavailableError: runtime onnx (spec.server.runtime")
