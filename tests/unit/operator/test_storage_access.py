"""What the operator reads on a resource's behalf: only with the resource's own credentials (or none),
never its own files unless enabled, never more than the caps, and caches that cannot leak across
namespaces or credentials."""
from __future__ import annotations

import dataclasses
import json

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


# -- a DriftMonitor's report history (history.json, beside the model's versions) -------------------------------

def _history(points: int) -> bytes:
    from modelloop import report

    return json.dumps(report.encode_history([{"t": i, "version": 1, "samples": 100} for i in range(points)])).encode()


HOSTILE_HISTORIES = {
    # json.loads recursed until RecursionError, which no caller caught: the report was never written again
    "deeply-nested": b'{"format": "modelloop.report-history/v1", "points": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",
    "too-many-values": b"[" + b"0," * 1_500_000 + b"0]",  # 3 MiB: 1.5 million values, ~100 MB once parsed
    "too-large": _history(1) + b" " * storage.MAX_REPORT_HISTORY_BYTES,
}


@pytest.fixture()
def local_reports(tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "SETTINGS", dataclasses.replace(SETTINGS, local_storage=True))
    folder = tmp_path / "models" / "reports" / "churn"
    folder.mkdir(parents=True)
    return folder


@pytest.mark.parametrize("kind", list(HOSTILE_HISTORIES))
def test_a_hostile_report_history_is_refused_before_it_is_parsed_and_read_as_none(local_reports, kind, monkeypatch,
                                                                                  caplog):
    from modelloop.artifacts import limits

    (local_reports / "history.json").write_bytes(HOSTILE_HISTORIES[kind])
    monkeypatch.setattr(limits.json, "loads", lambda *a, **k: pytest.fail("the document was parsed"))
    assert storage.read_report_history(f"file://{local_reports}/history.json", storage.ANONYMOUS) == []
    assert "report_history_refused" in caplog.text and "the limit of" in caplog.text  # the bound, named


def test_a_report_history_within_the_bounds_is_read(local_reports):
    (local_reports / "history.json").write_bytes(_history(2000))
    points = storage.read_report_history(f"file://{local_reports}/history.json", storage.ANONYMOUS)
    assert [p["t"] for p in points] == list(range(2000))


def test_a_monitor_whose_history_is_hostile_starts_a_fresh_one_and_keeps_reporting(local_reports):
    from modelloop.controllers import drift

    (local_reports / "history.json").write_bytes(HOSTILE_HISTORIES["deeply-nested"])
    monitor = {"metadata": {"namespace": "ml", "name": "churn"}, "spec": {"deploymentRef": {"name": "churn"}}}
    serving = drift.Serving(version=1, metadata={}, credentials=storage.ANONYMOUS,
                            base=f"file://{local_reports.parents[1]}")
    state = drift.MonitorState()
    for minute in range(2):
        drift.publish_report(monitor, {"conditions": []}, drift.Seen(serving=serving),
                             [("Warning", "DriftDetected", f"check {minute}")], state)
    written = json.loads((local_reports / "history.json").read_bytes())
    assert [p["decisions"][0]["message"] for p in written["points"]] == ["check 0", "check 1"]
    assert (local_reports / "report.html").read_text().count("DriftDetected") >= 2
