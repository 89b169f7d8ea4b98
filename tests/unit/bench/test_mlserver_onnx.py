"""bench/server/mlserver_onnx.py, the onnxruntime runtime MLServer serves comparison (b) with, answers a V2
request as modelloop-serve does for the same model.onnx: same outputs, same values. It runs in MLServer's
own venv (bench/.venv-mlserver, created by bench/server/run.py), in a subprocess; without that venv the
test is skipped, saying how to create it."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[3]
MLSERVER_PYTHON = ROOT / "bench" / ".venv-mlserver" / "bin" / "python"
FEATURES = 6
ESTIMATORS = {
    "logreg": {"class": "sklearn.linear_model.LogisticRegression", "params": {"max_iter": 500}},
    "forest": {"class": "sklearn.ensemble.RandomForestClassifier", "params": {"n_estimators": 5, "max_depth": 4}},
}
# Loads the runtime the way MLServer does (ModelSettings naming the implementation and the model.onnx), answers
# the request on stdin and prints the response.
ANSWER = """
import asyncio, sys
sys.path.insert(0, sys.argv[1])
from mlserver.settings import ModelParameters, ModelSettings
from mlserver.types import InferenceRequest
from mlserver_onnx import OnnxModel

async def answer():
    model = OnnxModel(ModelSettings(name="bench", implementation=OnnxModel,
                                    parameters=ModelParameters(uri=sys.argv[2], version="v1")))
    assert await model.load()
    response = await model.predict(InferenceRequest.model_validate_json(sys.stdin.read()))
    print(response.model_dump_json())

asyncio.run(answer())
"""

pytestmark = pytest.mark.skipif(not MLSERVER_PYTHON.exists(),
                                reason=f"{MLSERVER_PYTHON} is absent: run bench/server/run.py once (its smoke run "
                                       f"is enough) to create MLServer's venv")


def trained(tmp_path: Path, estimator: dict) -> str:
    from sklearn.datasets import make_classification

    from modelloop.training.trainer import train

    x, y = make_classification(n_samples=400, n_features=FEATURES, n_informative=4, random_state=0)
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(FEATURES)])
    frame["label"] = y
    frame.to_csv(tmp_path / "data.csv", index=False)
    train({"dataset": {"uri": f"file://{tmp_path / 'data.csv'}", "target": "label"}, "estimator": estimator,
           "output": {"uri": f"file://{tmp_path / 'out'}"}}, version=1, identity={"name": "bench"})
    assert (tmp_path / "out" / "v1" / "model.onnx").exists(), "the trainer wrote no model.onnx"
    return f"file://{tmp_path / 'out'}/v1"


def modelloop_answer(uri: str, body: bytes) -> dict:
    """What modelloop-serve (--runtime onnx) answers: its own decoding, prediction and encoding."""
    from modelloop_server.cli import load_served_model
    from modelloop_server.schema import RequestLimits
    from modelloop_server.v2 import decode_infer, encode_infer

    model = load_served_model(uri, "bench", runtime="onnx")
    model.warm_up()
    assert model.runtime == "onnx"
    request = decode_infer(body, model, RequestLimits.for_model(max_rows=100, max_string_length=100,
                                                                features=FEATURES))
    predictions, probabilities = model.predict(request.rows, proba=request.proba)
    response, _ = encode_infer(model, request, predictions, probabilities)
    return json.loads(response)


def mlserver_answer(model_onnx: Path, body: bytes) -> dict:
    done = subprocess.run([str(MLSERVER_PYTHON), "-c", ANSWER, str(ROOT / "bench" / "server"), str(model_onnx)],
                          input=body.decode(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.mark.parametrize("outputs", [None, ["predict", "predict_proba"]], ids=["default", "with-probabilities"])
@pytest.mark.parametrize("kind", sorted(ESTIMATORS))
def test_the_mlserver_onnx_runtime_answers_a_v2_request_as_modelloop_serve_does(tmp_path, kind, outputs):
    uri = trained(tmp_path, ESTIMATORS[kind])
    rows = np.random.default_rng(1).normal(size=(5, FEATURES)).round(6)
    request: dict = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": list(rows.shape),
                                 "data": rows.tolist()}]}
    if outputs:
        request["outputs"] = [{"name": name} for name in outputs]
    body = orjson.dumps(request)

    ours = modelloop_answer(uri, body)
    theirs = mlserver_answer(tmp_path / "out" / "v1" / "model.onnx", body)

    assert [o["name"] for o in theirs["outputs"]] == [o["name"] for o in ours["outputs"]] == (outputs or ["predict"])
    for mine, other in zip(ours["outputs"], theirs["outputs"]):
        assert other["data"] == mine["data"], other["name"]
    assert len(ours["outputs"][0]["data"]) == 5
