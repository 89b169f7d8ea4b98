"""load_model: digests first (pinned metadata, then the model against metadata and its pin), then the
exact type list, then skops."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import skops.io
from sklearn.preprocessing import FunctionTransformer
from sklearn.tree import DecisionTreeClassifier

from modelloop.artifacts import (
    HARMLESS_UFUNCS, ArtifactIntegrityError, UntrustedTypeError, check_model_file, load_model, open_store,
    serialize_model, sha256_bytes,
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
    with pytest.raises(ArtifactIntegrityError, match="is not the pinned " + "a" * 64):
        load_model(uri, expected_sha256="a" * 64)


def test_metadata_is_refused_when_it_is_not_the_pinned_checksum_before_it_is_parsed(tmp_path: Path,
                                                                                     make_metadata) -> None:
    uri = commit_tree(f"file://{tmp_path}", make_metadata)
    metadata_file = tmp_path / "v1" / "metadata.json"
    pinned = sha256_bytes(metadata_file.read_bytes())
    assert load_model(uri, expected_metadata_sha256=pinned).metadata.version == 1

    metadata_file.write_bytes(b"{not json")  # a parser never sees this: the digest differs first
    with pytest.raises(ArtifactIntegrityError, match=f"metadata.json: sha256 .* is not the pinned {pinned}"):
        load_model(uri, expected_metadata_sha256=pinned)


def test_a_metadata_edit_that_keeps_the_model_digest_is_caught_by_the_metadata_pin(tmp_path: Path,
                                                                                   make_metadata) -> None:
    uri = commit_tree(f"file://{tmp_path}", make_metadata)
    metadata_file = tmp_path / "v1" / "metadata.json"
    pinned = sha256_bytes(metadata_file.read_bytes())
    metadata = json.loads(metadata_file.read_text())
    metadata["schema"]["target"]["classes"] = [1, 0]  # swaps what the server reports, model untouched
    metadata_file.write_text(json.dumps(metadata))

    assert load_model(uri).metadata.schema_.target.classes == [1, 0]  # consistent with itself
    with pytest.raises(ArtifactIntegrityError, match="is not the pinned"):
        load_model(uri, expected_metadata_sha256=pinned)


def test_loading_ignores_the_trusted_types_listed_in_metadata(tmp_path: Path, make_metadata) -> None:
    # Listing nothing does not stop a model the trainer writes; listing more does not widen anything
    # (tests/unit/artifacts/test_model_attacks.py forges that list for every attack).
    uri = commit_tree(f"file://{tmp_path}", make_metadata, trusted=[])
    assert load_model(uri).model.predict(X).tolist() == Y.tolist()


def test_a_model_holding_a_function_outside_the_ufunc_list_cannot_be_stored() -> None:
    with pytest.raises(UntrustedTypeError, match=r"pathlib.read_text \(function\); the list holds what"):
        serialize_model(FunctionTransformer(func=Path.read_text))


def test_harmless_numpy_ufuncs_are_accepted_as_functions() -> None:
    model = FunctionTransformer(func=np.log1p, inverse_func=np.expm1).fit(X)
    data, _ = serialize_model(model)
    assert set(check_model_file(data)) >= {"numpy.log1p", "numpy.expm1"}
    loaded = skops.io.loads(data, trusted=check_model_file(data))
    assert loaded.transform(X).tolist() == np.log1p(X).tolist()


def test_the_harmless_ufunc_list_holds_numpy_ufuncs_only() -> None:
    for name in HARMLESS_UFUNCS:
        module, _, attribute = name.rpartition(".")
        assert module == "numpy" and isinstance(getattr(np, attribute), np.ufunc), name


def test_a_file_that_is_not_a_skops_zip_is_an_integrity_error() -> None:
    for data in (b"", b"PK\x03\x04 not really", b"\x80\x04\x95 a pickle"):
        with pytest.raises(ArtifactIntegrityError, match="not a readable skops file"):
            check_model_file(data)
