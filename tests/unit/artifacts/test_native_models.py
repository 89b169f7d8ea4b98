"""XGBoost and LightGBM versions: their native model file (XGBoost's JSON, LightGBM's text) is verified like any
file of a version (digest and size from metadata.json and the pin, read within the recorded size) before
model.onnx serves them, and metadata.json cannot pair a model format with a class it does not hold."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from modelloop.artifacts import (
    ArtifactIntegrityError, InvalidMetadataError, OnnxOnlyError, OnnxUnavailableError, load_model, validate_metadata,
)
from modelloop.training import train

FILES = {"xgboost.XGBClassifier": "model.xgboost.json", "lightgbm.LGBMRegressor": "model.lightgbm.txt"}


def _frame(rows: int = 200) -> pd.DataFrame:
    rng = np.random.default_rng(5)
    frame = pd.DataFrame({"a": rng.normal(0, 1, rows), "b": rng.uniform(0, 10, rows)})
    frame["label"] = np.where(frame["a"] + frame["b"] / 5 > 1, "high", "low")
    frame["value"] = 2 * frame["a"] + frame["b"]
    return frame


@pytest.fixture(scope="module", params=sorted(FILES))
def version(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, str]:
    """(class path, the version's folder, its URI), trained once per module by the real trainer."""
    class_path = request.param
    root = tmp_path_factory.mktemp("native")
    target, drop = ("label", "value") if class_path.endswith("Classifier") else ("value", "label")
    _frame().drop(columns=[drop]).to_csv(root / "train.csv", index=False)
    spec = {"dataset": {"uri": f"file://{root}/train.csv", "target": target},
            "estimator": {"class": class_path, "params": {"n_estimators": 10}}, "output": {"uri": f"file://{root}/out"}}
    train(spec, version=1, identity={})
    return class_path, root / "out" / "v1", f"file://{root}/out/v1"


def _copy(version: tuple[str, Path, str], tmp_path: Path) -> tuple[Path, str, dict[str, Any]]:
    """A copy of the version to tamper with: (folder, URI, its metadata)."""
    import shutil

    folder = tmp_path / "out" / "v1"
    shutil.copytree(version[1], folder)
    return folder, f"file://{folder}", json.loads((folder / "metadata.json").read_text())


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_native_version_loads_through_onnx_with_its_pinned_digests(version):
    class_path, folder, uri = version
    metadata = json.loads((folder / "metadata.json").read_text())

    loaded = load_model(uri, expected_sha256=_digest(folder / FILES[class_path]),
                        expected_metadata_sha256=_digest(folder / "metadata.json"), runtime="auto")

    assert loaded.runtime == "onnx" and metadata["model"]["file"] == FILES[class_path]


def test_a_tampered_native_model_file_is_refused(version, tmp_path):
    class_path, *_ = version
    folder, uri, _ = _copy(version, tmp_path)
    native = folder / FILES[class_path]
    native.write_bytes(native.read_bytes().replace(b"1", b"2", 1))  # same size, another model

    with pytest.raises(ArtifactIntegrityError, match=f"{FILES[class_path]}: sha256 or size does not match"):
        load_model(uri, runtime="auto")


def test_a_native_file_replaced_along_with_its_digest_in_metadata_is_caught_by_the_pins(version, tmp_path):
    class_path, folder_before, _ = version
    folder, uri, metadata = _copy(version, tmp_path)
    native = folder / FILES[class_path]
    native.write_bytes(b"\x80\x04 a pickle, say")
    metadata["model"].update(sha256=_digest(native), size=native.stat().st_size)
    (folder / "metadata.json").write_text(json.dumps(metadata))

    with pytest.raises(ArtifactIntegrityError, match="is not the pinned"):
        load_model(uri, expected_sha256=_digest(folder_before / FILES[class_path]), runtime="auto")
    with pytest.raises(ArtifactIntegrityError, match=f"the model file is not a {metadata['model']['format']} model"):
        load_model(uri, runtime="auto")  # unpinned: the digest matches, the format does not


def test_a_native_version_is_not_served_by_scikit_learn(version):
    with pytest.raises(OnnxOnlyError, match="served through model.onnx only; use runtime auto or onnx"):
        load_model(version[2], runtime="sklearn")


@pytest.mark.parametrize("edit, rule", [
    (lambda m: m["estimator"].update({"class": "xgboost.XGBRanker"}), "holds only"),
    (lambda m: m["estimator"].update({"class": "evil.Unpickler"}), "holds only"),
    (lambda m: m["estimator"].update({"class": "sklearn.linear_model.LogisticRegression"}), "holds only"),
    (lambda m: m["model"].update({"format": "skops"}), "another model.format than its own"),
    (lambda m: m["model"].update({"format": "lightgbm-text" if m["model"]["format"] == "xgboost-json"
                                  else "xgboost-json"}), "another model.format than its own"),
    (lambda m: m["model"].update({"trustedTypes": ["builtins.eval"]}), "model.trustedTypes lists skops types"),
    (lambda m: m.update({"onnx": {"skipped": "no parity"}}), "served through model.onnx, which onnx does not name"),
])
def test_metadata_pairing_a_native_format_with_another_class_or_no_onnx_is_refused(version, tmp_path, edit, rule):
    folder, uri, metadata = _copy(version, tmp_path)
    edit(metadata)
    (folder / "metadata.json").write_text(json.dumps(metadata))

    with pytest.raises(InvalidMetadataError, match=rule):
        validate_metadata(metadata)
    with pytest.raises(InvalidMetadataError, match=rule):
        load_model(uri, runtime="auto")


def test_a_skops_version_cannot_claim_a_boosting_class(make_metadata):
    metadata = make_metadata(1, b"model")
    metadata["estimator"]["class"] = "lightgbm.LGBMClassifier"

    with pytest.raises(InvalidMetadataError, match="another model.format than its own"):
        validate_metadata(metadata)


def test_a_native_version_without_a_pinned_metadata_digest_has_no_runtime_to_fall_back_to(version):
    class_path, folder, uri = version
    with pytest.raises(OnnxUnavailableError, match="whose digest is not pinned"):
        load_model(uri, expected_sha256=_digest(folder / FILES[class_path]), runtime="auto")
