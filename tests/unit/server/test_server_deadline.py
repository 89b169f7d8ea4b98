"""Models that never finish (issue 22, finding 6): a prediction call has a deadline, --inference-timeout-seconds
(spec.server.inferenceTimeout).

- onnxruntime: the run is terminated, its requests get 504 and the server serves on; a warm-up past the
  deadline refuses the model; a graph whose loop count or allocation comes from the request never loads.
- scikit-learn cannot be interrupted: its requests get 504 at the deadline, later and queued ones 503, and
  liveness fails until the call returns, so that the kubelet replaces a container whose worker never does.

A hung scikit-learn call is simulated by holding the real estimator's predict on a gate (as test_server_limits
does); a hung onnxruntime run is real: a Loop of 2**62 iterations when a value is negative.
"""
from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from onnx import TensorProto, helper

from modelloop.artifacts import sha256_bytes
from modelloop_server.app import ModelServerApp
from modelloop_server.config import ServerConfig
from tests.fixtures.onnx_graphs import const, loop_body

from .conftest import (
    Artifact, ServerProcess, free_port, refused_at_start, running, serve_in_thread, v2_columns, v2_matrix,
)
from .test_server_limits import HANG_GUARD, ROW, HeldEstimator, served, wait_until

TIMEOUT = 0.3  # seconds; what the tests check is the answer, never how long it took


class Held:
    """The flowers model behind real HTTP (in a thread) with --inference-timeout-seconds TIMEOUT, one request
    per batch, its predict held on a gate."""

    def __init__(self, artifact: Artifact, **limits: Any) -> None:
        self.model, self.estimator = served(artifact, HeldEstimator)
        config = ServerConfig(sketch_port=free_port(), model_uri=artifact.uri, max_batch_size=1, max_batch_wait_ms=0,
                              inference_timeout_seconds=TIMEOUT, **limits)
        self.app = ModelServerApp(config, load=lambda: self.model)

    def infer(self, url: str) -> httpx.Response:
        return httpx.post(f"{url}/v2/models/flowers/infer", json=v2_matrix([ROW]), timeout=HANG_GUARD)

    def infer_in_thread(self, url: str) -> tuple[threading.Thread, list[httpx.Response]]:
        answers: list[httpx.Response] = []
        thread = threading.Thread(target=lambda: answers.append(self.infer(url)))
        thread.start()
        return thread, answers


def test_a_scikit_learn_call_past_the_inference_timeout_answers_504_and_fails_liveness_until_it_returns(
        artifacts: dict[str, Artifact]) -> None:
    held = Held(artifacts["flowers"])
    with serve_in_thread(held.app) as url:
        wait_until(lambda: httpx.get(f"{url}/v2/health/ready").status_code == 200)
        assert httpx.get(f"{url}/v2/health/live").status_code == 200
        held.estimator.gate.clear()
        try:
            stuck = held.infer(url)  # answered at the deadline, while predict still waits at the gate

            assert stuck.status_code == 504
            assert "did not finish within 0.3 s" in stuck.json()["error"]
            assert "inferenceTimeout" in stuck.json()["error"]
            live = httpx.get(f"{url}/v2/health/live")
            assert live.status_code == 503 and live.json() == {"live": False}
            refused = held.infer(url)
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert "stuck" in refused.json()["error"]
        finally:
            held.estimator.gate.set()
        wait_until(lambda: httpx.get(f"{url}/v2/health/live").status_code == 200)
        assert held.infer(url).status_code == 200


def test_requests_queued_behind_a_stuck_call_are_answered_503_not_left_waiting(artifacts: dict[str, Artifact]) -> None:
    held = Held(artifacts["flowers"], max_queue=8)
    with serve_in_thread(held.app) as url:
        wait_until(lambda: httpx.get(f"{url}/v2/health/ready").status_code == 200)
        held.estimator.gate.clear()
        held.estimator.entered.clear()
        try:
            first, first_answer = held.infer_in_thread(url)
            assert held.estimator.entered.wait(HANG_GUARD)
            queued = [held.infer_in_thread(url) for _ in range(3)]
            wait_until(lambda: not first.is_alive() and all(not thread.is_alive() for thread, _ in queued))
        finally:
            held.estimator.gate.set()
        assert first_answer[0].status_code == 504
        assert [answers[0].status_code for _, answers in queued] == [503, 503, 503]
        wait_until(lambda: held.infer(url).status_code == 200)


# -- onnxruntime, in real server processes -------------------------------------------------------------------

def prices_graph(*nodes: Any, initializers: tuple = ()) -> bytes:
    """A graph over the prices model's features (size, rooms) whose `looped` output is its prediction."""
    inputs = [helper.make_tensor_value_info(name, TensorProto.DOUBLE, [None, 1]) for name in ("size", "rooms")]
    tail = [helper.make_node("Mul", ["rooms", "zero"], ["no_rooms"]),
            helper.make_node("Add", ["looped", "no_rooms"], ["predict"])]
    graph = helper.make_graph([*nodes, *tail], "hostile", inputs,
                              [helper.make_tensor_value_info("predict", TensorProto.DOUBLE, [None, 1])],
                              [const("zero", 0.0), *initializers])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]).SerializeToString()


def loop_of_2_62_while(compare: str) -> bytes:
    """Loads (its trip count is a constant), then runs 2**62 iterations when `compare`(min(size), 0) holds."""
    return prices_graph(helper.make_node("ReduceMin", ["size"], ["low"], keepdims=0),
                        helper.make_node(compare, ["low", "zero"], ["again"]),
                        helper.make_node("Loop", ["M", "again", "size"], ["looped"], body=loop_body()),
                        initializers=(const("M", np.int64(2 ** 62)),))


def allocation_sized_by_the_request() -> bytes:
    """The finding's ConstantOfShape: as many float32 as the request's size says (1.8 GiB for 5e8)."""
    return prices_graph(helper.make_node("Cast", ["size"], ["n"], to=TensorProto.INT64),
                        helper.make_node("Reshape", ["n", "flat"], ["shape"]),
                        helper.make_node("ConstantOfShape", ["shape"], ["big"]),
                        helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0),
                        helper.make_node("Cast", ["total"], ["total64"], to=TensorProto.DOUBLE),
                        helper.make_node("Mul", ["total64", "zero"], ["nothing"]),
                        helper.make_node("Add", ["size", "nothing"], ["looped"]),
                        initializers=(const("flat", np.array([-1])),))


def with_graph(prices: Artifact, root: Path, graph: bytes) -> str:
    """A copy of the prices version whose model.onnx is `graph`, recorded in its metadata.json."""
    target = root / "hostile" / "v1"
    shutil.copytree(prices.path, target)
    (target / "model.onnx").write_bytes(graph)
    metadata = json.loads((target / "metadata.json").read_text())
    metadata["onnx"].update(sha256=sha256_bytes(graph), size=len(graph))
    (target / "metadata.json").write_text(json.dumps(metadata))
    return f"file://{target}"


def prices_request(size: float) -> dict[str, Any]:
    return v2_columns({"size": [size], "rooms": [3.0]})


def test_an_onnx_run_past_the_inference_timeout_is_cancelled_and_the_server_serves_on(
        artifacts: dict[str, Artifact], tmp_path: Path) -> None:
    uri = with_graph(artifacts["prices"], tmp_path, loop_of_2_62_while("Less"))
    server = ServerProcess(["--model-uri", uri, "--runtime", "onnx", "--inference-timeout-seconds", str(TIMEOUT)],
                           tmp_path / "server.log")
    with running({"onnx": server}):
        infer = f"{server.url}/v2/models/prices/infer"
        assert httpx.post(infer, json=prices_request(50.0)).json()["outputs"][0]["data"] == [50.0]
        for _ in range(2):  # before the fix, the first one hung for ever and the queue filled behind it
            hung = httpx.post(infer, json=prices_request(-1.0), timeout=HANG_GUARD)
            assert hung.status_code == 504 and "inferenceTimeout" in hung.json()["error"]
            wait_until(lambda: httpx.get(f"{server.url}/v2/health/live").status_code == 200)
            assert httpx.post(infer, json=prices_request(50.0)).status_code == 200
        assert "event=inference.timeout" in server.log.read_text()
        server.stop()  # SIGINT: the worker is free, so the process ends by itself (stop() kills only after 15 s)
        assert server.process.returncode == 0


def test_a_graph_allocating_as_the_request_says_is_refused_at_start(artifacts: dict[str, Artifact],
                                                                   tmp_path: Path) -> None:
    uri = with_graph(artifacts["prices"], tmp_path, allocation_sized_by_the_request())
    server = ServerProcess(["--model-uri", uri, "--runtime", "onnx"], tmp_path / "server.log").start()
    line, termination = refused_at_start(server)  # exits 1, never ready
    assert "ConstantOfShape input 0 (a size) computed from the input's values" in line
    assert "never from the input's values" in termination


def test_a_model_whose_onnx_warm_up_runs_past_the_inference_timeout_is_refused(
        artifacts: dict[str, Artifact], tmp_path: Path) -> None:
    from modelloop_server.cli import load_served_model

    uri = with_graph(artifacts["prices"], tmp_path, loop_of_2_62_while("Greater"))  # every warm-up row loops
    config = ServerConfig(sketch_port=free_port(), model_uri=uri, runtime="onnx", inference_timeout_seconds=TIMEOUT)
    app = ModelServerApp(config, load=lambda: load_served_model(uri, None, runtime="onnx"))
    reasons: list[str] = []
    app.on_fatal = reasons.append  # the CLI exits 1 with this reason as the termination message
    with serve_in_thread(app) as url:
        wait_until(lambda: bool(reasons))
        assert httpx.get(f"{url}/v2/health/ready").status_code == 503
    assert reasons[0].startswith("RunCancelled") and "inferenceTimeout" in reasons[0]


def test_the_inference_timeout_goes_from_the_model_deployment_to_the_server() -> None:
    from modelloop.api import ModelDeploymentSpec
    from modelloop.render.deployment import ServedModel, render_deployment
    from modelloop_server.config import parse_config

    owner = {"apiVersion": "modelloop.dev/v1alpha1", "kind": "ModelDeployment",
             "metadata": {"name": "churn", "namespace": "default", "uid": "u-1"}}
    model = ServedModel(1, "s3://models/churn/v1", "a" * 64, "b" * 64)
    for server, seconds in (({}, 10.0), ({"inferenceTimeout": "2500ms"}, 2.5), ({"inferenceTimeout": "1m"}, 60.0)):
        spec = ModelDeploymentSpec.model_validate({"model": {"uri": "s3://models/churn/v1"}, "server": server})
        container = render_deployment(owner, spec, model)["spec"]["template"]["spec"]["containers"][0]
        environ = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        assert parse_config(container["args"], environ).inference_timeout_seconds == seconds
