"""load_model with model.onnx: digests first (pinned metadata.json, then model.onnx against it), then the
ONNX checks (no external data, standard operators only), and only then onnxruntime; the runtime choice."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pandas as pd
import pytest
from onnx import TensorProto, helper, numpy_helper
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression

from modelloop.artifacts import (
    ArtifactIntegrityError, ArtifactLimitError, OnnxUnavailableError, check_onnx_file, load_model, open_store, serialize_model,
    sha256_bytes,
)
from modelloop.artifacts import onnx_model
from modelloop.training.onnx_export import export_onnx

FRAME = pd.DataFrame({"x": [0.0, 1.0, 2.0, 3.0, 0.5, 2.5]})
Y = np.array([0, 0, 1, 1, 0, 1])
SCHEMA = [{"name": "x", "dtype": "float64", "categorical": False}]


def commit(root: Path, make_metadata, *, onnx_bytes: bytes | None = None, onnx_info: dict | None = None,
           estimator=None) -> str:
    """v1 with model.skops and, from the exporter unless given, model.onnx with its metadata entry."""
    model = (estimator or LogisticRegression()).fit(FRAME, Y)
    skops_bytes, trusted = serialize_model(model)
    metadata = make_metadata(1, skops_bytes, trusted)
    exported = export_onnx(model, SCHEMA, "classification", FRAME)
    data = exported.data if onnx_bytes is None else onnx_bytes
    info = exported.info if onnx_info is None else onnx_info
    if data is not None and onnx_bytes is not None:  # a file written by someone else, recorded consistently
        info = {**exported.info, "sha256": sha256_bytes(data), "size": len(data)}
    metadata["onnx"] = info
    files = {"model.skops": skops_bytes, **({"model.onnx": data} if data is not None else {})}
    return open_store(f"file://{root}").commit_version(1, files, metadata)


@pytest.fixture
def forbid_onnxruntime(monkeypatch: pytest.MonkeyPatch):
    """Call it once the version is written (the exporter runs onnxruntime): from then on, any session
    creation fails the test."""
    def must_not_run(*args, **kwargs):
        raise AssertionError("onnxruntime was given a model that should have been refused before")
    return lambda: monkeypatch.setattr(onnxruntime, "InferenceSession", must_not_run)


@pytest.mark.parametrize("runtime", ["auto", "onnx"])
def test_a_version_with_model_onnx_is_served_by_onnxruntime_when_the_runtime_allows(tmp_path, make_metadata,
                                                                                    runtime):
    loaded = load_model(commit(tmp_path, make_metadata), runtime=runtime)

    assert loaded.runtime == "onnx" and loaded.model is None
    predictions, probabilities = loaded.onnx.predict(FRAME.to_numpy(), proba=True)
    reference = LogisticRegression().fit(FRAME, Y)
    assert predictions.tolist() == reference.predict(FRAME).tolist() and predictions.dtype == np.int64
    np.testing.assert_allclose(probabilities, reference.predict_proba(FRAME), atol=1e-12)


def test_runtime_sklearn_never_reads_model_onnx(tmp_path, make_metadata, forbid_onnxruntime):
    uri = commit(tmp_path, make_metadata)
    forbid_onnxruntime()
    (tmp_path / "v1" / "model.onnx").write_bytes(b"garbage")  # would be refused if it were read

    loaded = load_model(uri, runtime="sklearn")

    assert loaded.runtime == "sklearn" and loaded.model.predict(FRAME).tolist() == Y.tolist()


def test_a_tampered_model_onnx_is_refused_by_digest_before_onnxruntime_sees_it(tmp_path, make_metadata,
                                                                              forbid_onnxruntime, monkeypatch):
    uri = commit(tmp_path, make_metadata)
    forbid_onnxruntime()
    path = tmp_path / "v1" / "model.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    monkeypatch.setattr(onnx_model, "check_onnx_file", lambda *args: pytest.fail("the file was parsed"))

    for runtime in ("auto", "onnx"):
        with pytest.raises(ArtifactIntegrityError, match=r"model.onnx: sha256 .* does not match metadata.json"):
            load_model(uri, runtime=runtime)


def test_metadata_naming_another_onnx_digest_is_refused(tmp_path, make_metadata, forbid_onnxruntime):
    uri = commit(tmp_path, make_metadata)
    forbid_onnxruntime()
    metadata_file = tmp_path / "v1" / "metadata.json"
    pinned = sha256_bytes(metadata_file.read_bytes())
    metadata = json.loads(metadata_file.read_text())
    metadata["onnx"]["sha256"] = sha256_bytes(b"another graph")
    metadata_file.write_text(json.dumps(metadata))

    with pytest.raises(ArtifactIntegrityError, match="does not match metadata.json"):
        load_model(uri, runtime="onnx")  # unpinned: the file does not match what metadata.json now says
    with pytest.raises(ArtifactIntegrityError, match=f"metadata.json: sha256 .* is not the pinned {pinned}"):
        load_model(uri, runtime="onnx", expected_metadata_sha256=pinned)  # pinned: metadata.json itself is refused


def external_data_model() -> onnx.ModelProto:
    """Identity of a weight whose bytes are "in" a file named by the model."""
    weight = numpy_helper.from_array(np.zeros(1), "w")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="../../../../etc/passwd")
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["predict"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [None, 1])],
                              [helper.make_tensor_value_info("predict", TensorProto.DOUBLE, [None, 1])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def external_data_in_a_subgraph() -> onnx.ModelProto:
    hidden = numpy_helper.from_array(np.zeros(1), "c")
    hidden.ClearField("raw_data")
    hidden.data_location = TensorProto.EXTERNAL
    hidden.external_data.add(key="location", value="/proc/self/environ")
    branch = helper.make_graph([helper.make_node("Constant", [], ["out"], value=hidden)], "branch", [],
                               [helper.make_tensor_value_info("out", TensorProto.DOUBLE, [1])])
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["cond"], value=numpy_helper.from_array(np.array(True))),
         helper.make_node("If", ["cond"], ["predict"], then_branch=branch, else_branch=branch)], "g",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [None, 1])],
        [helper.make_tensor_value_info("predict", TensorProto.DOUBLE, [1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def custom_operator_model() -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("RunShell", ["x"], ["predict"], domain="com.example.evil")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [None, 1])],
                              [helper.make_tensor_value_info("predict", TensorProto.DOUBLE, [None, 1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                   helper.make_opsetid("com.example.evil", 1)])


def local_function_model() -> onnx.ModelProto:
    function = helper.make_function("local", "Twice", ["a"], ["b"], [helper.make_node("Add", ["a", "a"], ["b"])],
                                    [helper.make_opsetid("", 21)])
    graph = helper.make_graph([helper.make_node("Twice", ["x"], ["predict"], domain="local")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [None, 1])],
                              [helper.make_tensor_value_info("predict", TensorProto.DOUBLE, [None, 1])])
    return helper.make_model(graph, functions=[function],
                             opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("local", 1)])


@pytest.mark.parametrize("build, refused", [
    (external_data_model, "external data (graph initializer 'w')"),
    (external_data_in_a_subgraph, "external data (graph node 'If' attribute 'then_branch' subgraph node"),
    (custom_operator_model, "operator 'RunShell' of domain 'com.example.evil'"),
    (local_function_model, "model-local function"),
])
def test_an_onnx_file_using_external_data_or_custom_operators_is_refused_before_onnxruntime(
        tmp_path, make_metadata, forbid_onnxruntime, build, refused):
    data = build().SerializeToString()
    uri = commit(tmp_path, make_metadata, onnx_bytes=data)  # its digest recorded: only the content check stops it
    forbid_onnxruntime()
    with pytest.raises(ArtifactIntegrityError, match="refuses to load") as checked:
        check_onnx_file(data)
    assert refused in str(checked.value)
    with pytest.raises(ArtifactIntegrityError, match="refuses to load"):
        load_model(uri, runtime="auto")


def test_load_model_refuses_model_onnx_whose_weights_pass_the_setting_before_onnxruntime(
        tmp_path, make_metadata, forbid_onnxruntime, monkeypatch):
    weights = numpy_helper.from_array(np.ones(64 * 1024), "w")  # 512 KiB
    graph = helper.make_graph([helper.make_node("ReduceSum", ["w"], ["s"], keepdims=0),
                               helper.make_node("Add", ["x", "s"], ["predict"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [None, 1])],
                              [helper.make_tensor_value_info("predict", TensorProto.DOUBLE, [None, 1])], [weights])
    uri = commit(tmp_path, make_metadata, onnx_bytes=helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21)]).SerializeToString())
    assert load_model(uri, runtime="onnx").runtime == "onnx"  # the default admits it
    forbid_onnxruntime()
    monkeypatch.setenv("MODELLOOP_MAX_ONNX_INITIALIZER_BYTES", str(256 * 1024))
    with pytest.raises(ArtifactLimitError, match=r"weights .* the limit of 262,144 "
                                                 r"\(MODELLOOP_MAX_ONNX_INITIALIZER_BYTES\)"):
        load_model(uri, runtime="auto")


def test_a_file_that_is_not_onnx_is_refused() -> None:
    with pytest.raises(ArtifactIntegrityError, match="not a readable ONNX model|holds no graph"):
        check_onnx_file(b"PK\x03\x04 a zip, not a protobuf graph")


def test_a_skops_only_version_is_served_by_scikit_learn_on_auto_and_refused_on_onnx(tmp_path, make_metadata):
    uri = commit(tmp_path, make_metadata, estimator=DummyClassifier())  # no converter: skops-only
    metadata = json.loads((tmp_path / "v1" / "metadata.json").read_text())
    assert metadata["onnx"] == {"skipped": "skl2onnx has no converter for DummyClassifier"}

    assert load_model(uri, runtime="auto").runtime == "sklearn"
    with pytest.raises(OnnxUnavailableError, match="has no model.onnx to serve: skl2onnx has no converter"):
        load_model(uri, runtime="onnx")


def test_model_onnx_is_used_only_when_its_digest_is_pinned_through_metadata(tmp_path, make_metadata):
    uri = commit(tmp_path, make_metadata)
    metadata = json.loads((tmp_path / "v1" / "metadata.json").read_text())
    model_pin = metadata["model"]["sha256"]

    assert load_model(uri, runtime="auto", expected_sha256=model_pin).runtime == "sklearn"
    with pytest.raises(OnnxUnavailableError, match="whose digest is not pinned"):
        load_model(uri, runtime="onnx", expected_sha256=model_pin)
    pinned = sha256_bytes((tmp_path / "v1" / "metadata.json").read_bytes())
    assert load_model(uri, runtime="onnx", expected_sha256=model_pin,
                      expected_metadata_sha256=pinned).runtime == "onnx"


def test_the_model_pin_must_match_metadata_even_when_model_skops_is_not_read(tmp_path, make_metadata):
    uri = commit(tmp_path, make_metadata)
    pinned = sha256_bytes((tmp_path / "v1" / "metadata.json").read_bytes())
    with pytest.raises(ArtifactIntegrityError, match="is not the pinned " + "a" * 64):
        load_model(uri, runtime="onnx", expected_sha256="a" * 64, expected_metadata_sha256=pinned)
