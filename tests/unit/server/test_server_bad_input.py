"""Every client mistake gets a 4xx with a JSON {"error": ...} naming what is wrong; never a 500."""
from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from .conftest import ServerProcess, v2_columns, v2_matrix

GOOD_ROW = [5.0, 3.4, 1.5, 0.2]
INFER = "/v2/models/flowers/infer"
V1 = "/v1/models/flowers:predict"
JSON = {"content-type": "application/json"}


def _columns(**overrides: Any) -> dict[str, Any]:
    columns = {"sepal_length": [5.0], "sepal_width": [3.4], "petal_length": [1.5], "petal_width": [0.2]}
    columns.update(overrides)
    return v2_columns({k: v for k, v in columns.items() if v is not None})


# (case id, method, path, body (dict -> JSON, bytes -> raw), headers, status, fragment of the error message)
CASES: list[tuple[str, str, str, Any, dict[str, str], int, str]] = [
    ("invalid-json", "POST", INFER, b'{"inputs": [', JSON, 400, "not valid JSON"),
    ("empty-body", "POST", INFER, b"", JSON, 400, "empty"),
    ("body-not-an-object", "POST", INFER, [1, 2], JSON, 400, "JSON object"),
    ("no-inputs", "POST", INFER, {"id": "x"}, JSON, 400, "'inputs' must be a non-empty list"),
    ("input-without-data", "POST", INFER, {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 4]}]}, JSON,
     400, "has no 'data'"),
    ("unknown-datatype", "POST", INFER, v2_matrix([GOOD_ROW], datatype="FLOAT"), JSON, 400, "datatype 'FLOAT'"),
    ("bad-shape-value", "POST", INFER,
     {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, -4], "data": GOOD_ROW}]}, JSON, 400, "shape [1, -4]"),
    ("wrong-feature-count", "POST", INFER, v2_matrix([[1.0, 2.0, 3.0]]), JSON, 400, "has shape [1, 3]; a single input holds rows of shape [n, 4]"),
    ("shape-does-not-match-data", "POST", INFER,
     {"inputs": [{"name": "x", "datatype": "FP64", "shape": [2, 4], "data": GOOD_ROW}]}, JSON, 400,
     "has shape [2, 4] (8 elements) but its data has 4"),
    ("ragged-rows", "POST", INFER,
     {"inputs": [{"name": "x", "datatype": "FP64", "shape": [2, 4], "data": [GOOD_ROW, [1.0]]}]}, JSON, 400,
     "ragged"),
    ("strings-in-numeric-matrix", "POST", INFER, v2_matrix([[5.0, "wide", 1.5, 0.2]]), JSON, 400,
     "must hold numbers; found 'wide'"),
    ("bytes-matrix", "POST", INFER, v2_matrix([GOOD_ROW], datatype="BYTES"), JSON, 400, "datatype BYTES"),
    ("missing-feature-input", "POST", INFER, _columns(petal_width=None), JSON, 400, "missing feature 'petal_width'"),
    ("unknown-input", "POST", INFER, {"inputs": _columns()["inputs"] + [
        {"name": "colour", "datatype": "FP64", "shape": [1], "data": [1.0]}]}, JSON, 400, "unknown input 'colour'"),
    ("bytes-for-numeric-feature", "POST", INFER,
     v2_columns({"sepal_length": ["5"], "sepal_width": [3.4], "petal_length": [1.5], "petal_width": [0.2]},
                {"sepal_length": "BYTES"}), JSON, 400, "feature 'sepal_length' is numeric"),
    ("feature-lengths-differ", "POST", INFER, _columns(sepal_width=[3.4, 3.0]), JSON, 400,
     "'sepal_width' has 2 values"),
    ("duplicate-input", "POST", INFER, {"inputs": _columns()["inputs"] + _columns()["inputs"][:1]}, JSON, 400,
     "appears twice"),
    ("zero-rows", "POST", INFER, {"inputs": [{"name": "x", "datatype": "FP64", "shape": [0, 4], "data": []}]}, JSON,
     400, "no rows"),
    ("unknown-output", "POST", INFER, {**v2_matrix([GOOD_ROW]), "outputs": [{"name": "explain"}]}, JSON, 400,
     "unknown output 'explain'"),
    ("binary-size-without-binary-part", "POST", INFER,
     {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "parameters": {"binary_data_size": 16}}]},
     JSON, 400, "no binary part"),
    ("wrong-content-type", "POST", INFER, b"inputs=1", {"content-type": "application/x-www-form-urlencoded"}, 415,
     "content-type 'application/x-www-form-urlencoded' is not supported"),
    ("body-too-large", "POST", INFER, v2_matrix([GOOD_ROW] * 5000), JSON, 413, "limit is 65536"),
    ("unknown-model", "POST", "/v2/models/tulips/infer", v2_matrix([GOOD_ROW]), JSON, 404,
     "model 'tulips' not found; this server serves 'flowers'"),
    ("unknown-version", "POST", "/v2/models/flowers/versions/7/infer", v2_matrix([GOOD_ROW]), JSON, 404,
     "no version '7'"),
    ("unknown-path", "GET", "/v3/models", None, {}, 404, "no such endpoint: GET /v3/models"),
    ("wrong-method", "GET", INFER, None, {}, 405, "use POST"),
    ("v1-without-instances", "POST", V1, {"rows": [GOOD_ROW]}, JSON, 400, "'instances'"),
    ("v1-row-too-short", "POST", V1, {"instances": [GOOD_ROW, [1.0]]}, JSON, 400, "ragged"),
    ("v1-object-missing-feature", "POST", V1, {"instances": [{"sepal_length": 5.0}]}, JSON, 400,
     "instances[0]: missing feature 'sepal_width'"),
    ("v1-unknown-model", "POST", "/v1/models/tulips:predict", {"instances": [GOOD_ROW]}, JSON, 404, "'tulips'"),
    ("v1-unknown-verb", "POST", "/v1/models/flowers:explain", {"instances": [GOOD_ROW]}, JSON, 404,
     "no such endpoint"),
]


@pytest.mark.parametrize("method, path, body, headers, status, fragment",
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_request_gets_its_4xx_and_a_json_error_naming_the_problem(
        flowers: ServerProcess, client: httpx.Client, method: str, path: str, body: Any, headers: dict[str, str],
        status: int, fragment: str) -> None:
    content = body if isinstance(body, bytes) or body is None else orjson.dumps(body)
    response = client.request(method, f"{flowers.url}{path}", content=content, headers=headers)
    assert response.status_code == status, response.text[:300]
    assert response.headers["content-type"] == "application/json"
    assert fragment in response.json()["error"]


def test_a_text_feature_needs_bytes(churn: ServerProcess, client: httpx.Client) -> None:
    request = v2_columns({"tenure": [1.0], "spend": [2.0], "plan": [3], "region": [1]}, {"plan": "INT64"})
    response = client.post(f"{churn.url}/v2/models/churn-model/infer", json=request)
    assert response.status_code == 400
    assert "feature 'plan' is text (categorical), send BYTES" in response.json()["error"]


def test_a_model_with_text_features_refuses_the_matrix_form(churn: ServerProcess, client: httpx.Client) -> None:
    response = client.post(f"{churn.url}/v2/models/churn-model/infer", json=v2_matrix([[1.0, 2.0, 3.0, 4.0]]))
    assert response.status_code == 400
    assert "text features (plan)" in response.json()["error"]


def test_probabilities_of_a_regressor_are_a_400(prices: ServerProcess, client: httpx.Client) -> None:
    response = client.post(f"{prices.url}/v2/models/prices/infer",
                           json={**v2_matrix([[50.0, 2.0]]), "parameters": {"predict_proba": True}})
    assert response.status_code == 400
    assert "without class probabilities" in response.json()["error"]


def test_rows_the_estimator_rejects_get_422_and_only_their_request_fails(flowers: ServerProcess,
                                                                         client: httpx.Client) -> None:
    # LogisticRegression refuses NaN; None in JSON is NaN.
    response = client.post(f"{flowers.url}{INFER}", json=v2_matrix([[5.0, None, 1.5, 0.2]]))
    assert response.status_code == 422
    assert "NaN" in response.json()["error"]
    assert client.post(f"{flowers.url}{INFER}", json=v2_matrix([GOOD_ROW])).status_code == 200


def test_no_client_mistake_ever_produced_a_500(flowers: ServerProcess, client: httpx.Client) -> None:
    for case in CASES:  # run them all again, then read the counters
        content = case[3] if isinstance(case[3], bytes) or case[3] is None else orjson.dumps(case[3])
        client.request(case[1], f"{flowers.url}{case[2]}", content=content, headers=case[4])
    text = client.get(f"{flowers.url}/metrics").text
    assert 'code="500"' not in text
    assert client.get(f"{flowers.url}/v2/health/ready").status_code == 200
