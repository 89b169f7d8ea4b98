"""What the operator reads on a resource's behalf: only with the resource's own credentials (or none),
never its own files unless enabled, never more than the caps, and caches that cannot leak across
namespaces or credentials."""
from __future__ import annotations

import dataclasses

import pytest
from botocore import UNSIGNED

from modelloop.artifacts import ArtifactIntegrityError, ObjectNotFoundError, StorageError, open_store, sha256_bytes
from modelloop.artifacts.backends import _s3_client
from modelloop.cache import BoundedCache
from modelloop.config import SETTINGS, Settings
from modelloop.controllers import storage
from tests.unit.artifacts.conftest import metadata_for

MODEL = b"not really a model, but bytes with a checksum"


@pytest.fixture()
def local_store(tmp_path, monkeypatch):
    """A committed v1 on a file:// store, with local storage enabled for the operator (as the tests'
    fixtures that rely on file:// must do explicitly)."""
    monkeypatch.setattr(storage, "SETTINGS", dataclasses.replace(SETTINGS, local_storage=True))
    uri = f"file://{tmp_path}/models"
    open_store(uri).commit_version(1, {"model.skops": MODEL}, metadata_for(1, MODEL))
    return uri, tmp_path / "models" / "v1" / "model.skops"


@pytest.mark.parametrize("uri", ["file:///etc/passwd", "pvc://claim/models"])
def test_local_paths_are_refused_unless_enabled(uri):
    with pytest.raises(storage.StorageAccessError, match=r"spec.output.uri .*does not read .*operator.localStorage"):
        storage.check_allowed(uri, "spec.output.uri", Settings(local_storage=False))
    storage.check_allowed(uri, "spec.output.uri", Settings(local_storage=True))
    storage.check_allowed("s3://bucket/models", "spec.output.uri", Settings(local_storage=False))


def test_local_storage_is_off_by_default(monkeypatch):
    monkeypatch.delenv("MODELLOOP_OPERATOR_LOCAL_STORAGE", raising=False)
    assert Settings().local_storage is False
    monkeypatch.setenv("MODELLOOP_OPERATOR_LOCAL_STORAGE", "true")
    assert Settings().local_storage is True


def test_verified_metadata_refuses_a_file_store_when_local_storage_is_off(local_store, monkeypatch):
    monkeypatch.setattr(storage, "SETTINGS", dataclasses.replace(SETTINGS, local_storage=False))
    with pytest.raises(storage.StorageAccessError):
        storage.verified_metadata("ns", local_store[0], 1, storage.ANONYMOUS)


def test_without_a_secret_the_operator_reads_s3_anonymously_never_with_its_own_environment(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "operator-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "operator-secret")
    anonymous = _s3_client(storage.ANONYMOUS)
    assert anonymous.meta.config.signature_version is UNSIGNED
    assert _s3_client({"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}).meta.config.signature_version is not UNSIGNED


def test_model_files_are_hashed_as_they_stream_and_refused_above_the_cap(local_store, monkeypatch):
    uri, _ = local_store
    store = open_store(uri)
    assert store.file_sha256(1, "model.skops", max_bytes=len(MODEL)) == (sha256_bytes(MODEL), len(MODEL))
    with pytest.raises(StorageError, match="larger than the limit"):
        store.file_sha256(1, "model.skops", max_bytes=len(MODEL) - 1)
    monkeypatch.setattr(storage, "SETTINGS", dataclasses.replace(storage.SETTINGS, max_model_bytes=8))
    with pytest.raises(StorageError, match="larger than the limit of 8 bytes"):
        storage.verified_metadata("ns-cap", uri, 1, storage.ANONYMOUS)


def test_verified_metadata_is_cached_per_namespace_and_credentials(local_store):
    uri, model_path = local_store
    first = storage.verified_metadata("team-a", uri, 1, storage.ANONYMOUS)
    assert first["sha256"] == sha256_bytes(MODEL) and first["uri"].endswith("/v1")
    model_path.write_bytes(b"tampered" + MODEL[8:])  # same size, other bytes
    assert storage.verified_metadata("team-a", uri, 1, storage.ANONYMOUS) == first  # immutable version: cached
    with pytest.raises(ArtifactIntegrityError):  # another namespace verifies for itself
        storage.verified_metadata("team-b", uri, 1, storage.ANONYMOUS)
    with pytest.raises(ArtifactIntegrityError):  # and so do other credentials
        storage.verified_metadata("team-a", uri, 1, {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"})


def test_bounded_cache_forgets_the_least_recently_used_entry():
    cache: BoundedCache[str, int] = BoundedCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c"), len(cache)) == (1, None, 3, 2)


def test_verified_metadata_checks_model_onnx_against_metadata_too(tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "SETTINGS", dataclasses.replace(SETTINGS, local_storage=True))
    uri = f"file://{tmp_path}/models"
    graph = b"an onnx graph, as far as digests go"
    metadata = {**metadata_for(1, MODEL), "onnx": {"file": "model.onnx", "format": "onnx", "sha256": sha256_bytes(graph),
                                                   "size": len(graph), "predictDtype": "<i8"}}
    open_store(uri).commit_version(1, {"model.skops": MODEL, "model.onnx": graph}, metadata)
    assert storage.verified_metadata("ns-onnx", uri, 1, storage.ANONYMOUS)["sha256"] == sha256_bytes(MODEL)

    (tmp_path / "models" / "v1" / "model.onnx").write_bytes(graph[::-1])  # same size, other bytes
    with pytest.raises(ArtifactIntegrityError, match="model.onnx: sha256 or size does not match metadata.json"):
        storage.verified_metadata("ns-onnx-tampered", uri, 1, storage.ANONYMOUS)


def test_a_deleted_version_is_forgotten_for_every_namespace_and_credentials(local_store):
    uri, _ = local_store
    open_store(uri).commit_version(2, {"model.skops": MODEL}, metadata_for(2, MODEL))
    keys = {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}
    for namespace, credentials in (("team-a", storage.ANONYMOUS), ("team-b", keys)):
        for version in (1, 2):
            storage.verified_metadata(namespace, uri, version, credentials)
    storage.delete_version(f"{uri}/", 1, storage.ANONYMOUS)  # spelled differently from the cached URIs
    for namespace, credentials in (("team-a", storage.ANONYMOUS), ("team-b", keys)):
        with pytest.raises(ObjectNotFoundError):
            storage.verified_metadata(namespace, uri, 1, credentials)
        assert storage.verified_metadata(namespace, uri, 2, credentials)["uri"].endswith("/v2")  # untouched
