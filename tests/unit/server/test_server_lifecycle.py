"""Startup (verify, load, warm up, then ready), refusal of a bad artifact, and draining on SIGTERM."""
from __future__ import annotations

import json
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.testing
import skops.io
from modelloop.artifacts import load_model, open_store, sha256_bytes
from sklearn.dummy import DummyClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from modelloop_server.app import ModelServerApp
from modelloop_server.cli import load_served_model
from modelloop_server.config import ServerConfig
from modelloop_server.model import ServedModel

from .conftest import Artifact, ServerProcess, refused_at_start, serve_in_thread, v2_matrix, free_port

ROW = [5.0, 3.4, 1.5, 0.2]


def _tampered_copy(artifact: Artifact, destination: Path) -> str:
    """The version copied with one byte of model.skops flipped: same size, different sha256."""
    shutil.copytree(artifact.path, destination)
    model_file = destination / "model.skops"
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model_file.write_bytes(bytes(data))
    return f"file://{destination}"


def test_a_model_whose_sha256_does_not_match_is_refused_and_the_process_exits_1(
        artifacts: dict[str, Artifact], tmp_path: Path) -> None:
    uri = _tampered_copy(artifacts["flowers"], tmp_path / "v1")
    server = ServerProcess(["--model-uri", uri, "--runtime", "sklearn"], tmp_path / "server.log")
    line, termination = refused_at_start(server.start())
    assert "sha256" in line and "refusing to load" in line
    assert termination.startswith("ModelRefused: ArtifactIntegrityError")


def _pins(artifact: Artifact) -> dict[str, str]:
    """The digests the operator renders into the pod template for this version."""
    return {"MODELLOOP_MODEL_SHA256": artifact.metadata["model"]["sha256"],
            "MODELLOOP_METADATA_SHA256": sha256_bytes((artifact.path / "metadata.json").read_bytes())}


def test_a_server_pinned_to_a_model_refuses_another_valid_version_put_in_its_place(
        artifacts: dict[str, Artifact], tmp_path: Path) -> None:
    swapped = tmp_path / "v1"
    shutil.copytree(artifacts["prices"].path, swapped)  # consistent with itself: only the pin can tell
    pins = _pins(artifacts["flowers"])
    server = ServerProcess(["--model-uri", f"file://{swapped}"], tmp_path / "model-pin.log",
                           env={"MODELLOOP_MODEL_SHA256": pins["MODELLOOP_MODEL_SHA256"]}).start()
    line, termination = refused_at_start(server)
    assert f"is not the pinned {pins['MODELLOOP_MODEL_SHA256']}" in line
    assert termination.startswith("ModelRefused: ArtifactIntegrityError")

    both = ServerProcess(["--model-uri", f"file://{swapped}"], tmp_path / "both-pins.log", env=pins).start()
    line, _ = refused_at_start(both)
    assert "metadata.json: sha256" in line and f"is not the pinned {pins['MODELLOOP_METADATA_SHA256']}" in line


def test_a_server_pinned_to_a_metadata_json_refuses_an_edited_one(artifacts: dict[str, Artifact],
                                                                   tmp_path: Path) -> None:
    edited = tmp_path / "v1"
    shutil.copytree(artifacts["flowers"].path, edited)
    metadata = json.loads((edited / "metadata.json").read_text())
    metadata["metric"]["value"] = 1.0  # the model file and its digest untouched
    (edited / "metadata.json").write_text(json.dumps(metadata))
    server = ServerProcess(["--model-uri", f"file://{edited}"], tmp_path / "server.log",
                           env=_pins(artifacts["flowers"])).start()
    line, termination = refused_at_start(server)
    assert "metadata.json: sha256" in line and "is not the pinned" in line
    assert termination.startswith("ModelRefused: ArtifactIntegrityError")


def test_a_model_file_that_would_run_code_is_refused_and_its_payload_never_runs(
        artifacts: dict[str, Artifact], tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    chain = Pipeline([
        ("fill", FunctionTransformer(np.full_like, kw_args={"fill_value": f"open({str(marker)!r}, 'w').write('x')",
                                                              "dtype": "O", "shape": ()})),
        ("text", FunctionTransformer(np.str_)),
        ("run", FunctionTransformer(numpy.testing.runstring, kw_args={"dict": {}})),
        ("model", DummyClassifier().fit([[0.0], [1.0]], ["a", "b"]))])
    data = skops.io.dumps(chain)
    metadata = json.loads((artifacts["flowers"].path / "metadata.json").read_text())
    metadata["model"].update(sha256=sha256_bytes(data), size=len(data),
                             trustedTypes=skops.io.get_untrusted_types(data=data))  # forged, as an attacker would
    del metadata["onnx"]  # a version without model.onnx: even runtime auto loads model.skops
    uri = open_store(f"file://{tmp_path}/store").commit_version(1, {"model.skops": data}, metadata)

    line, termination = refused_at_start(ServerProcess(["--model-uri", uri], tmp_path / "server.log").start())
    assert "UntrustedTypeError" in line and "numpy.testing._private.utils.runstring (function)" in line
    assert termination.startswith("ModelRefused: UntrustedTypeError")
    assert not marker.exists()


def test_a_version_that_does_not_exist_is_refused(artifacts: dict[str, Artifact]) -> None:
    uri = artifacts["flowers"].uri.replace("/v1", "/v9")
    app = ModelServerApp(ServerConfig(sketch_port=free_port(), model_uri=uri), load=lambda: load_served_model(uri, None))
    refused = threading.Event()
    reasons: list[str] = []
    app.on_fatal = lambda reason: (reasons.append(reason), refused.set())
    with serve_in_thread(app) as url:
        assert refused.wait(timeout=20)
        assert httpx.get(f"{url}/v2/health/ready").status_code == 503
    assert reasons[0].startswith("ObjectNotFoundError") and "/v9" in reasons[0]


def test_sigterm_stops_readiness_drains_then_exits_0(artifacts: dict[str, Artifact], tmp_path: Path) -> None:
    # A 1.5 s batch wait keeps the first request in flight while the signal arrives.
    server = ServerProcess(["--model-uri", artifacts["flowers"].uri, "--max-batch-wait-ms", "1500",
                            "--max-batch-size", "1000", "--drain-seconds", "1.5"], tmp_path / "server.log")
    server.start().wait_ready()
    infer = f"{server.url}/v2/models/flowers/infer"
    in_flight: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: in_flight.update(response=httpx.post(infer, json=v2_matrix([ROW]),
                                                                                 timeout=20)))
    thread.start()
    time.sleep(0.3)
    server.process.send_signal(signal.SIGTERM)

    deadline = time.monotonic() + 2
    while httpx.get(f"{server.url}/v2/health/ready").status_code != 503:
        assert time.monotonic() < deadline, "readiness did not turn 503 after SIGTERM"
        time.sleep(0.02)
    assert httpx.get(f"{server.url}/v2/health/live").status_code == 200
    during_drain = httpx.post(infer, json=v2_matrix([ROW]), timeout=20)
    assert during_drain.status_code == 200
    assert during_drain.headers["connection"] == "close"

    thread.join(timeout=20)
    assert in_flight["response"].status_code == 200
    assert server.wait_exit(timeout=20) == 0
    log = server.log.read_text()
    assert "event=server.draining" in log and "event=server.exited" in log and "code=0" in log


class _Gated:
    """A loader that blocks until released, then loads the real artifact."""

    def __init__(self, uri: str, broken: bool = False) -> None:
        self.uri, self.broken = uri, broken
        self.release = threading.Event()

    def __call__(self) -> ServedModel:
        self.release.wait(timeout=20)
        loaded = load_model(self.uri)
        model = ServedModel(loaded.model, loaded.metadata.wire())
        if self.broken:
            model.estimator = _Unpredictable()
        return model


class _Unpredictable:
    classes_ = ["a"]

    def predict(self, x: Any) -> Any:
        raise RuntimeError("this estimator cannot predict")

    predict_proba = predict


def test_readiness_turns_true_only_after_the_model_is_loaded_and_warmed_up(artifacts: dict[str, Artifact]) -> None:
    loader = _Gated(artifacts["flowers"].uri)
    app = ModelServerApp(ServerConfig(sketch_port=free_port(), model_uri=loader.uri), load=loader)
    with serve_in_thread(app) as url:
        assert httpx.get(f"{url}/v2/health/live").status_code == 200
        assert httpx.get(f"{url}/v2/health/ready").status_code == 503
        assert httpx.get(f"{url}/v2/models/flowers/ready").status_code == 503
        loading = httpx.post(f"{url}/v2/models/flowers/infer", json=v2_matrix([ROW]))
        assert loading.status_code == 503 and "not loaded yet" in loading.json()["error"]
        loader.release.set()
        deadline = time.monotonic() + 20
        while httpx.get(f"{url}/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert httpx.post(f"{url}/v2/models/flowers/infer", json=v2_matrix([ROW])).status_code == 200


def test_a_model_that_fails_its_warm_up_prediction_is_refused(artifacts: dict[str, Artifact]) -> None:
    loader = _Gated(artifacts["flowers"].uri, broken=True)
    loader.release.set()
    app = ModelServerApp(ServerConfig(sketch_port=free_port(), model_uri=loader.uri), load=loader)
    refused = threading.Event()
    reasons: list[str] = []
    app.on_fatal = lambda reason: (reasons.append(reason), refused.set())
    with serve_in_thread(app) as url:
        assert refused.wait(timeout=20)
        assert httpx.get(f"{url}/v2/health/ready").status_code == 503
    assert reasons == ["RuntimeError: this estimator cannot predict"]
