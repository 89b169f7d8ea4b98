"""load_model: checksum first, then skops with only allow-listed, recorded types trusted."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import skops.io
from sklearn.preprocessing import FunctionTransformer
from sklearn.tree import DecisionTreeClassifier

from modelloop.artifacts import (
    ArtifactIntegrityError, UntrustedTypeError, is_allowed_type, load_model, open_store, serialize_model,
)

X = np.array([[0.0], [1.0], [2.0], [3.0]])
Y = np.array([0, 0, 1, 1])


def commit_tree(output_uri: str, make_metadata, *, trusted: list[str] | None = None) -> str:
    data, needed = serialize_model(DecisionTreeClassifier(random_state=0).fit(X, Y))
    return open_store(output_uri).commit_version(1, {"model.skops": data},
                                                 make_metadata(1, data, needed if trusted is None else trusted))


def test_committed_model_loads_and_predicts(output_uri: str, make_metadata) -> None:
    loaded = load_model(commit_tree(output_uri, make_metadata))

    assert loaded.model.predict(X).tolist() == Y.tolist()
    assert loaded.metadata.model.trusted_types == ["sklearn.tree._tree.Tree"]
    assert loaded.uri == f"{output_uri}/v1"


def test_tampered_model_file_is_refused_before_it_is_deserialised(tmp_path: Path, make_metadata,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    uri = commit_tree(f"file://{tmp_path}", make_metadata)
    model_file = tmp_path / "v1" / "model.skops"
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model_file.write_bytes(bytes(data))

    def must_not_run(*args, **kwargs):
        raise AssertionError("skops was called on a file whose checksum does not match")
    monkeypatch.setattr(skops.io, "loads", must_not_run)
    monkeypatch.setattr(skops.io, "get_untrusted_types", must_not_run)
    with pytest.raises(ArtifactIntegrityError, match="does not match metadata.json"):
        load_model(uri)


def test_model_is_refused_when_it_is_not_the_pinned_checksum(tmp_path: Path, make_metadata) -> None:
    uri = commit_tree(f"file://{tmp_path}", make_metadata)
    with pytest.raises(ArtifactIntegrityError, match="is not the expected " + "a" * 64):
        load_model(uri, expected_sha256="a" * 64)


def test_types_outside_the_allow_list_are_refused_even_when_metadata_trusts_them(tmp_path: Path,
                                                                                 make_metadata) -> None:
    uri = commit_tree(f"file://{tmp_path}", make_metadata, trusted=["sklearn.tree._tree.Tree", "os.system"])
    with pytest.raises(UntrustedTypeError, match="outside the allow-list .*: os.system"):
        load_model(uri)


def test_types_the_metadata_does_not_trust_are_refused(tmp_path: Path, make_metadata) -> None:
    uri = commit_tree(f"file://{tmp_path}", make_metadata, trusted=[])
    with pytest.raises(UntrustedTypeError, match="not trusted: sklearn.tree._tree.Tree"):
        load_model(uri)


def test_a_model_holding_code_from_outside_the_allow_list_cannot_be_stored_or_loaded(tmp_path: Path,
                                                                                     make_metadata) -> None:
    model = FunctionTransformer(func=Path.read_text)  # pathlib: outside sklearn/numpy/scipy/builtins
    with pytest.raises(UntrustedTypeError, match="outside the allow-list"):
        serialize_model(model)

    data = skops.io.dumps(model)  # written by someone else, with a forged trusted list
    forged = skops.io.get_untrusted_types(data=data)
    open_store(f"file://{tmp_path}").commit_version(1, {"model.skops": data}, make_metadata(1, data, forged))
    with pytest.raises(UntrustedTypeError, match="pathlib"):
        load_model(f"file://{tmp_path}/v1")


def test_builtins_that_run_code_are_never_trusted() -> None:
    assert is_allowed_type("builtins.list") and is_allowed_type("numpy.float64")
    for name in ("builtins.eval", "builtins.exec", "builtins.open", "builtins.__import__", "os.system",
                 "subprocess.Popen", "sklearnx.Evil"):
        assert not is_allowed_type(name), name
