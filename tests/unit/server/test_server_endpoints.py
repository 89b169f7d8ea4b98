"""Every endpoint of modelloop-serve, over HTTP, against real artifacts written by the trainer."""
from __future__ import annotations

import struct

import httpx
import numpy as np
import orjson
import pandas as pd
import pytest
from modelloop.artifacts import load_model

from .conftest import NUMERIC_FEATURES, Artifact, ServerProcess, flowers_frame, v2_columns, v2_matrix

ROWS = flowers_frame(rows=6, seed=7)[NUMERIC_FEATURES].to_numpy().tolist()


def local_predictions(artifact: Artifact, frame: pd.DataFrame, proba: bool = False) -> np.ndarray:
    model = load_model(artifact.uri).model
    return model.predict_proba(frame) if proba else model.predict(frame)


# -- health and metadata ------------------------------------------------------------------------------

def test_liveness_is_200(flowers: ServerProcess, client: httpx.Client) -> None:
    response = client.get(f"{flowers.url}/v2/health/live")
    assert response.status_code == 200
    assert response.json() == {"live": True}


def test_readiness_is_200_once_the_model_is_loaded_and_warmed_up(flowers: ServerProcess, client: httpx.Client) -> None:
    response = client.get(f"{flowers.url}/v2/health/ready")
    assert response.status_code == 200
    assert response.json() == {"ready": True}
    assert flowers.metric("modelloop_server_ready") == 1


def test_server_metadata_names_the_server_and_its_extensions(flowers: ServerProcess, client: httpx.Client) -> None:
    body = client.get(f"{flowers.url}/v2").json()
    assert body["name"] == "modelloop-server"
    assert "binary_tensor_data" in body["extensions"]


def test_model_metadata_lists_each_feature_and_the_outputs(flowers: ServerProcess, client: httpx.Client) -> None:
    body = client.get(f"{flowers.url}/v2/models/flowers").json()
    assert body["name"] == "flowers"
    assert body["versions"] == ["1"]
    assert body["inputs"] == [{"name": n, "datatype": "FP64", "shape": [-1]} for n in NUMERIC_FEATURES]
    assert body["outputs"] == [{"name": "predict", "datatype": "BYTES", "shape": [-1]},
                               {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 3]}]
    assert body["parameters"]["classes"] == ["setosa", "versicolor", "virginica"]


def test_model_metadata_marks_text_features_bytes_and_int_categories_int64(churn: ServerProcess,
                                                                           client: httpx.Client) -> None:
    body = client.get(f"{churn.url}/v2/models/churn-model").json()
    assert {i["name"]: i["datatype"] for i in body["inputs"]} == {
        "tenure": "FP64", "spend": "FP64", "plan": "BYTES", "region": "INT64"}


def test_model_ready_is_200_for_the_served_model(flowers: ServerProcess, client: httpx.Client) -> None:
    response = client.get(f"{flowers.url}/v2/models/flowers/ready")
    assert response.status_code == 200
    assert response.json() == {"name": "flowers", "ready": True}


def test_model_name_comes_from_the_flag_or_env_when_given(churn: ServerProcess, client: httpx.Client) -> None:
    assert client.get(f"{churn.url}/v2/models/churn-model/ready").status_code == 200
    assert client.get(f"{churn.url}/v2/models/churn/ready").status_code == 404


@pytest.mark.parametrize("suffix", ["", "/ready", "/sketch"])
def test_versioned_routes_answer_for_the_served_version(flowers: ServerProcess, client: httpx.Client,
                                                        suffix: str) -> None:
    base = flowers.sketch_url if suffix == "/sketch" else flowers.url
    assert client.get(f"{base}/v2/models/flowers/versions/1{suffix}").status_code == 200


@pytest.mark.parametrize("path", ["/sketch", "/v2/models/flowers/sketch", "/v2/models/flowers/versions/1/sketch"])
def test_sketches_are_served_on_the_sketch_port_only(flowers: ServerProcess, client: httpx.Client, path: str) -> None:
    assert client.get(f"{flowers.url}{path}").status_code == 404
    assert client.get(f"{flowers.sketch_url}{path}").status_code == 200


@pytest.mark.parametrize("path", ["/metrics", "/v2/health/ready", "/v2/models/flowers", "/v2"])
def test_the_sketch_port_serves_nothing_else(flowers: ServerProcess, client: httpx.Client, path: str) -> None:
    assert client.get(f"{flowers.sketch_url}{path}").status_code == 404
    assert client.get(f"{flowers.url}{path}").status_code == 200


def test_versioned_infer_answers_for_the_served_version(flowers: ServerProcess, client: httpx.Client) -> None:
    response = client.post(f"{flowers.url}/v2/models/flowers/versions/1/infer", json=v2_matrix(ROWS[:1]))
    assert response.status_code == 200
    assert response.json()["model_version"] == "1"


# -- V2 inference -------------------------------------------------------------------------------------

def test_infer_with_one_matrix_input_predicts_what_the_model_predicts(flowers: ServerProcess, client: httpx.Client,
                                                                      artifacts: dict[str, Artifact]) -> None:
    response = client.post(f"{flowers.url}/v2/models/flowers/infer", json=v2_matrix(ROWS))
    assert response.status_code == 200
    body = response.json()
    assert body["model_name"] == "flowers"
    (output,) = body["outputs"]
    expected = local_predictions(artifacts["flowers"], pd.DataFrame(ROWS, columns=NUMERIC_FEATURES))
    assert output == {"name": "predict", "datatype": "BYTES", "shape": [len(ROWS)], "data": expected.tolist()}


def test_infer_accepts_flat_data_and_any_numeric_datatype(flowers: ServerProcess, client: httpx.Client) -> None:
    nested = client.post(f"{flowers.url}/v2/models/flowers/infer", json=v2_matrix(ROWS)).json()
    flat = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [len(ROWS), 4],
                        "data": [v for row in ROWS for v in row]}]}
    assert client.post(f"{flowers.url}/v2/models/flowers/infer", json=flat).json()["outputs"] == nested["outputs"]


def test_infer_with_one_input_per_feature_matches_the_matrix_form(flowers: ServerProcess,
                                                                  client: httpx.Client) -> None:
    columns = {name: [row[j] for row in ROWS] for j, name in enumerate(NUMERIC_FEATURES)}
    by_column = client.post(f"{flowers.url}/v2/models/flowers/infer", json=v2_columns(columns)).json()
    by_matrix = client.post(f"{flowers.url}/v2/models/flowers/infer", json=v2_matrix(ROWS)).json()
    assert by_column["outputs"] == by_matrix["outputs"]


def test_infer_returns_probabilities_when_the_predict_proba_parameter_is_set(
        flowers: ServerProcess, client: httpx.Client, artifacts: dict[str, Artifact]) -> None:
    body = client.post(f"{flowers.url}/v2/models/flowers/infer",
                       json={**v2_matrix(ROWS), "parameters": {"predict_proba": True}}).json()
    predict, proba = body["outputs"]
    assert predict["name"] == "predict"
    assert proba["name"] == "predict_proba" and proba["datatype"] == "FP64" and proba["shape"] == [len(ROWS), 3]
    assert proba["parameters"]["classes"] == ["setosa", "versicolor", "virginica"]
    expected = local_predictions(artifacts["flowers"], pd.DataFrame(ROWS, columns=NUMERIC_FEATURES), proba=True)
    np.testing.assert_allclose(np.reshape(proba["data"], (len(ROWS), 3)), expected)


def test_infer_returns_only_the_requested_outputs(flowers: ServerProcess, client: httpx.Client) -> None:
    body = client.post(f"{flowers.url}/v2/models/flowers/infer",
                       json={**v2_matrix(ROWS), "outputs": [{"name": "predict_proba"}]}).json()
    assert [o["name"] for o in body["outputs"]] == ["predict_proba"]


def test_infer_echoes_the_request_id(flowers: ServerProcess, client: httpx.Client) -> None:
    body = client.post(f"{flowers.url}/v2/models/flowers/infer", json={**v2_matrix(ROWS[:1]), "id": "req-42"}).json()
    assert body["id"] == "req-42"


def test_infer_on_a_mixed_model_takes_bytes_for_text_and_numbers_for_int_categories(
        churn: ServerProcess, client: httpx.Client, artifacts: dict[str, Artifact]) -> None:
    frame = pd.DataFrame({"tenure": [3.0, 20.0, 12.0], "spend": [10.0, 90.0, 50.0],
                          "plan": ["basic", "pro", "enterprise"], "region": [1, 3, 9]})
    request = v2_columns({c: frame[c].tolist() for c in frame.columns}, {"plan": "BYTES", "region": "INT64"})
    response = client.post(f"{churn.url}/v2/models/churn-model/infer", json=request)
    assert response.status_code == 200, response.text
    expected = local_predictions(artifacts["churn"], frame)
    assert response.json()["outputs"][0]["data"] == expected.tolist()


def test_regression_predictions_are_fp64_values(prices: ServerProcess, client: httpx.Client,
                                               artifacts: dict[str, Artifact]) -> None:
    rows = [[50.0, 2.0], [120.0, 4.0]]
    body = client.post(f"{prices.url}/v2/models/prices/infer", json=v2_matrix(rows)).json()
    (output,) = body["outputs"]
    assert output["datatype"] == "FP64"
    expected = local_predictions(artifacts["prices"], pd.DataFrame(rows, columns=["size", "rooms"]))
    np.testing.assert_allclose(output["data"], expected)


def test_binary_tensor_data_in_and_out(flowers: ServerProcess, client: httpx.Client) -> None:
    matrix = np.asarray(ROWS, dtype="<f4")
    header = orjson.dumps({
        "inputs": [{"name": "x", "datatype": "FP32", "shape": list(matrix.shape),
                    "parameters": {"binary_data_size": matrix.nbytes}}],
        "outputs": [{"name": "predict", "parameters": {"binary_data": True}},
                    {"name": "predict_proba", "parameters": {"binary_data": True}}]})
    response = client.post(f"{flowers.url}/v2/models/flowers/infer", content=header + matrix.tobytes(),
                           headers={"content-type": "application/octet-stream",
                                    "inference-header-content-length": str(len(header))})
    assert response.status_code == 200, response.text
    json_length = int(response.headers["inference-header-content-length"])
    doc = orjson.loads(response.content[:json_length])
    raw = response.content[json_length:]
    predict, proba = doc["outputs"]
    predict_raw, proba_raw = raw[:predict["parameters"]["binary_data_size"]], raw[predict["parameters"][
        "binary_data_size"]:]
    labels, offset = [], 0
    while offset < len(predict_raw):
        (length,) = struct.unpack_from("<I", predict_raw, offset)
        labels.append(predict_raw[offset + 4:offset + 4 + length].decode())
        offset += 4 + length
    as_json = client.post(f"{flowers.url}/v2/models/flowers/infer",
                          json={**v2_matrix(ROWS), "parameters": {"predict_proba": True}}).json()["outputs"]
    assert labels == as_json[0]["data"]
    np.testing.assert_allclose(np.frombuffer(proba_raw, dtype="<f8"), as_json[1]["data"], rtol=1e-5, atol=1e-6)  # FP32 in


# -- V1 -----------------------------------------------------------------------------------------------

def test_v1_model_status_says_ready(flowers: ServerProcess, client: httpx.Client) -> None:
    response = client.get(f"{flowers.url}/v1/models/flowers")
    assert response.status_code == 200
    assert response.json() == {"name": "flowers", "ready": True}


def test_v1_predict_takes_instances_as_rows(flowers: ServerProcess, client: httpx.Client,
                                           artifacts: dict[str, Artifact]) -> None:
    response = client.post(f"{flowers.url}/v1/models/flowers:predict", json={"instances": ROWS})
    assert response.status_code == 200
    expected = local_predictions(artifacts["flowers"], pd.DataFrame(ROWS, columns=NUMERIC_FEATURES))
    body = response.json()
    assert body == {"predictions": expected.tolist(), "id": body["id"]} and body["id"] == response.headers["x-request-id"]


def test_v1_predict_takes_instances_as_objects_and_inputs_as_columns(flowers: ServerProcess,
                                                                     client: httpx.Client) -> None:
    def predict(body: dict) -> list:
        return client.post(f"{flowers.url}/v1/models/flowers:predict", json=body).json()["predictions"]
    by_rows = predict({"instances": ROWS})
    objects = [dict(zip(NUMERIC_FEATURES, row)) for row in ROWS]
    columns = {name: [row[j] for row in ROWS] for j, name in enumerate(NUMERIC_FEATURES)}
    assert predict({"instances": objects}) == by_rows
    assert predict({"inputs": columns}) == by_rows
    assert predict({"inputs": ROWS}) == by_rows


def test_v1_predict_on_a_mixed_model_takes_objects(churn: ServerProcess, client: httpx.Client) -> None:
    instances = [{"tenure": 3.0, "spend": 10.0, "plan": "basic", "region": 1},
                 {"tenure": 20.0, "spend": 90.0, "plan": None, "region": 2}]
    response = client.post(f"{churn.url}/v1/models/churn-model:predict", json={"instances": instances})
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 2


# -- metrics and sketches -----------------------------------------------------------------------------

def test_metrics_count_requests_latency_batches_and_predictions(prices: ServerProcess, client: httpx.Client,
                                                                artifacts: dict[str, Artifact]) -> None:
    route = {"route": "/v2/models/{name}/infer"}
    before = prices.metric("modelloop_server_requests_total", {**route, "code": "200"})
    rows_before = prices.metric("modelloop_server_prediction_value_count")
    client.post(f"{prices.url}/v2/models/prices/infer", json=v2_matrix([[60.0, 2.0], [70.0, 3.0], [80.0, 3.0]]))
    text = client.get(f"{prices.url}/metrics").text
    assert prices.metric("modelloop_server_requests_total", {**route, "code": "200"}) == before + 1
    assert prices.metric("modelloop_server_request_duration_seconds_count", route) >= 1
    assert prices.metric("modelloop_server_batch_rows_count") >= 1
    assert prices.metric("modelloop_server_prediction_value_count") == rows_before + 3
    assert "modelloop_server_requests_in_flight" in text
    sha256 = artifacts["prices"].metadata["model"]["sha256"]
    assert prices.metric("modelloop_server_model_info", {"model": "prices", "version": "1", "sha256": sha256}) == 1


def test_metrics_count_predictions_per_class_for_classifiers(churn: ServerProcess, client: httpx.Client) -> None:
    # churn publishes after every row (--sketch-min-rows 1); flowers' default window is in
    # test_server_hostile_clients.py
    instances = [{"tenure": 3.0, "spend": 10.0, "plan": "basic", "region": 1},
                 {"tenure": 20.0, "spend": 90.0, "plan": "pro", "region": 2}]
    url = f"{churn.url}/v1/models/churn-model:predict"
    labels = client.post(url, json={"instances": instances}).json()["predictions"]
    label = labels[0]
    before = churn.metric("modelloop_server_predictions_total", {"class": label})
    client.post(url, json={"instances": instances})
    assert churn.metric("modelloop_server_predictions_total", {"class": label}) == before + labels.count(label)


def _sketch(server: ServerProcess, client: httpx.Client, path: str) -> dict:
    response = client.get(f"{server.sketch_url}{path}")
    assert response.status_code == 200
    return response.json()


def test_sketch_counts_each_value_sent_into_its_reference_bin(prices: ServerProcess, client: httpx.Client,
                                                              artifacts: dict[str, Artifact]) -> None:
    rows = [[31.0, 1.0], [75.5, 2.0], [149.0, 5.0], [90.0, 3.0]]
    before = _sketch(prices, client, "/v2/models/prices/sketch")
    client.post(f"{prices.url}/v2/models/prices/infer", json=v2_matrix(rows))
    after = _sketch(prices, client, "/v2/models/prices/sketch")
    assert after["rows"] == before["rows"] + 4
    for j, feature in enumerate(after["features"]):
        expected = np.zeros(len(feature["counts"]), dtype=int)
        for row in rows:
            expected[np.searchsorted(feature["edges"], row[j], side="right")] += 1
        old = next(f for f in before["features"] if f["name"] == feature["name"])
        assert (np.asarray(feature["counts"]) - old["counts"]).tolist() == expected.tolist(), feature["name"]
    assert after["predictions"]["rows"] == before["predictions"]["rows"] + 4


def test_a_sketch_is_published_only_after_the_minimum_window_of_rows(flowers: ServerProcess,
                                                                    client: httpx.Client) -> None:
    """Privacy (docs/security.md): however often the sketch is read, two published sketches differ by at
    least MODELLOOP_SKETCH_MIN_ROWS rows (default 100), so no reader isolates a few requests' values."""
    from modelloop_server.live import DEFAULT_MIN_ROWS

    def send_one() -> None:
        assert client.post(f"{flowers.url}/v2/models/flowers/infer", json=v2_matrix(ROWS[:1])).status_code == 200

    published = _sketch(flowers, client, "/sketch")
    for _ in range(DEFAULT_MIN_ROWS):  # rows of earlier tests may be pending: reach the next publication
        send_one()
        latest = _sketch(flowers, client, "/sketch")
        if latest["rows"] != published["rows"]:
            break
    else:
        raise AssertionError(f"no new sketch after {DEFAULT_MIN_ROWS} rows")
    assert latest["rows"] - published["rows"] >= DEFAULT_MIN_ROWS
    for _ in range(DEFAULT_MIN_ROWS - 1):  # everything counted is published: the window starts empty
        send_one()
        assert _sketch(flowers, client, "/sketch") == latest
    send_one()
    assert _sketch(flowers, client, "/sketch")["rows"] == latest["rows"] + DEFAULT_MIN_ROWS


def test_sketch_carries_instance_start_time_and_model_version(churn: ServerProcess, client: httpx.Client) -> None:
    first = _sketch(churn, client, "/v2/models/churn-model/sketch")
    again = _sketch(churn, client, "/sketch")
    assert first["format"] == "modelloop.sketch/v1"
    assert first["instance"] == again["instance"] and len(first["instance"]) >= 16
    assert first["started"].endswith("Z")
    assert first["modelVersion"] == 1
    assert [f["name"] for f in first["features"]] == ["tenure", "spend", "plan", "region"]
    assert first["predictions"]["features"][0]["name"] == "churned"


def test_sketch_counts_text_and_int_categories(churn: ServerProcess, client: httpx.Client) -> None:
    before = _sketch(churn, client, "/sketch")
    request = v2_columns({"tenure": [1.0, 2.0], "spend": [5.0, 6.0], "plan": ["basic", "unheard-of"],
                          "region": [2, 2]}, {"plan": "BYTES", "region": "INT64"})
    assert client.post(f"{churn.url}/v2/models/churn-model/infer", json=request).status_code == 200
    after = _sketch(churn, client, "/sketch")
    assert after["rows"] == before["rows"] + 2
    plan_before, plan = before["features"][2], after["features"][2]
    delta = dict(zip(plan["categories"] + ["(other)"], np.subtract(plan["counts"], plan_before["counts"]).tolist()))
    assert delta["basic"] == 1 and delta["(other)"] == 1
    region_before, region = before["features"][3], after["features"][3]
    assert dict(zip(region["categories"], np.subtract(region["counts"], region_before["counts"]).tolist()))["2"] == 2
