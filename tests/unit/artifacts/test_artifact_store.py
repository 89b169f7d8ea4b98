"""The versioned store: <output>/v<N>/ files + metadata.json, committed last, never overwritten."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelloop.artifacts import (
    ArtifactStore, InvalidMetadataError, InvalidUriError, ObjectNotFoundError, StorageError, StorageUri,
    VersionExistsError, open_store, parse_uri, read_object, validate_metadata, version_under,
)
from modelloop.artifacts.backends import backend_for

MODEL = b"model bytes v1"


def test_parse_uri_understands_s3_file_and_pvc() -> None:
    assert parse_uri("s3://my-bucket/models/iris/") == StorageUri("s3", "my-bucket", "models/iris")
    assert parse_uri("file:///var/data/x.csv") == StorageUri("file", "", "/var/data/x.csv")
    assert parse_uri("pvc://claim-1/sub/path") == StorageUri("pvc", "claim-1", "sub/path")
    assert str(parse_uri("s3://my-bucket/models").child("v3")) == "s3://my-bucket/models/v3"


@pytest.mark.parametrize("uri, message", [
    ("ftp://x", "uri 'ftp://x' has scheme 'ftp'; allowed: s3, file, pvc"),
    ("/tmp/x.csv", "has no scheme"),
    ("file://relative/x", "is not absolute"),
    ("s3://Bad_Bucket/x", "invalid bucket name 'Bad_Bucket'"),
    ("pvc://claim/../etc", "'..' path segments"),
])
def test_parse_uri_names_the_bad_value_and_what_is_allowed(uri: str, message: str) -> None:
    with pytest.raises(InvalidUriError, match="^uri .*" if message.startswith("uri") else None) as err:
        parse_uri(uri)
    assert message in str(err.value)


def test_pvc_uri_resolves_under_the_pvc_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MODELLOOP_PVC_ROOT", str(tmp_path))
    assert parse_uri("pvc://data/train/x.csv").local_path() == tmp_path / "data" / "train" / "x.csv"
    monkeypatch.delenv("MODELLOOP_PVC_ROOT")
    assert parse_uri("pvc://data/x.csv").local_path() == Path("/var/lib/modelloop/pvc/data/x.csv")


def test_committed_version_reads_back_with_its_files_and_metadata(output_uri: str, make_metadata) -> None:
    store = open_store(output_uri)
    assert store.versions() == []
    uri = store.commit_version(1, {"model.skops": MODEL}, make_metadata(1, MODEL))

    assert uri == store.version_uri(1) == f"{output_uri}/v1"
    assert store.versions() == [1]
    assert store.read_file(1, "model.skops") == MODEL
    assert store.read_metadata(1) == make_metadata(1, MODEL)


def test_existing_version_is_refused_and_left_untouched(output_uri: str, make_metadata) -> None:
    store = open_store(output_uri)
    store.commit_version(1, {"model.skops": MODEL}, make_metadata(1, MODEL))
    other = b"another model"
    with pytest.raises(VersionExistsError, match="version 1 already exists"):
        store.commit_version(1, {"model.skops": other}, make_metadata(1, other))

    assert store.read_file(1, "model.skops") == MODEL
    assert store.read_metadata(1)["model"]["size"] == len(MODEL)


def test_a_second_version_leaves_the_first_byte_identical(output_uri: str, make_metadata) -> None:
    store = open_store(output_uri)
    store.commit_version(1, {"model.skops": MODEL}, make_metadata(1, MODEL))
    before = (store.read_file(1, "model.skops"), store.read_file(1, "metadata.json"))
    store.commit_version(2, {"model.skops": b"v2"}, make_metadata(2, b"v2"))

    assert store.versions() == [1, 2]
    assert (store.read_file(1, "model.skops"), store.read_file(1, "metadata.json")) == before


def test_files_without_metadata_are_not_a_version_and_a_retry_can_commit_it(output_uri: str, make_metadata) -> None:
    store = open_store(output_uri)
    # what a run killed between moving its files and writing metadata.json leaves behind
    backend_for(store.base).write(store.base.child("v1", "model.skops"), b"half of a dead run")
    assert store.versions() == []
    with pytest.raises(ObjectNotFoundError, match="version 1 does not exist"):
        store.read_metadata(1)

    store.commit_version(1, {"model.skops": MODEL}, make_metadata(1, MODEL))
    assert store.versions() == [1]
    assert store.read_file(1, "model.skops") == MODEL


class RecordingBackend:
    """A backend that notes each write/move/create before doing it."""

    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, []

    def __getattr__(self, name: str):
        method = getattr(self.inner, name)
        if name not in ("write", "move", "write_new", "delete"):
            return method

        def recorded(*args):
            self.calls.append(" ".join([name, *(str(a) for a in args if isinstance(a, StorageUri))]))
            return method(*args)
        return recorded


def test_commit_stages_files_claims_the_version_moves_them_then_creates_metadata_last(output_uri: str,
                                                                                       make_metadata) -> None:
    base = parse_uri(output_uri)
    backend = RecordingBackend(backend_for(base))
    ArtifactStore(base, backend).commit_version(1, {"model.skops": MODEL}, make_metadata(1, MODEL))

    staged = f"{output_uri}/.staging/"
    assert [c.split(" ")[0] for c in backend.calls] == ["write", "write_new", "move", "write_new", "delete"]
    assert backend.calls[0].startswith(f"write {staged}") and backend.calls[0].endswith("/model.skops")
    assert backend.calls[1] == f"write_new {staged}v1.claim"
    assert backend.calls[2].endswith(f" {output_uri}/v1/model.skops")
    assert backend.calls[3] == f"write_new {output_uri}/v1/metadata.json"
    assert backend.calls[4] == f"delete {staged}v1.claim"
    assert sorted(backend.list_keys(base)) == ["v1/metadata.json", "v1/model.skops"]  # staging cleaned up
    assert not backend.exists(base.child(".staging", "v1.claim"))


def _claim(store: ArtifactStore, version: int, training: dict) -> None:
    """What a writer killed while holding the claim of `version` leaves behind."""
    owner = {key: training.get(key) for key in ("namespace", "name", "uid", "run")}
    backend_for(store.base).write(store.base.child(".staging", f"v{version}.claim"),
                                  json.dumps(owner, sort_keys=True).encode())


def test_a_version_claimed_by_another_run_is_refused_and_its_folder_left_alone(output_uri: str,
                                                                                make_metadata) -> None:
    store = open_store(output_uri)
    other = {**make_metadata(1, b"other")["training"], "name": "other", "uid": "u-2", "run": "other-v1"}
    _claim(store, 1, other)
    backend_for(store.base).write(store.base.child("v1", "model.skops"), b"the other run's file")

    with pytest.raises(VersionExistsError, match=r"version 1 is being committed by another writer \(run other-v1 of "
                                                 r"ModelTraining default/other\).*delete .*/\.staging/v1\.claim"):
        store.commit_version(1, {"model.skops": MODEL}, make_metadata(1, MODEL))
    assert store.read_file(1, "model.skops") == b"the other run's file" and store.versions() == []


def test_a_claim_left_by_a_killed_attempt_of_the_same_run_is_taken_over(output_uri: str, make_metadata) -> None:
    store = open_store(output_uri)
    _claim(store, 1, make_metadata(1, MODEL)["training"])  # the pod before this retry died holding it
    backend_for(store.base).write(store.base.child("v1", "model.skops"), b"half of a dead run")

    store.commit_version(1, {"model.skops": MODEL}, make_metadata(1, MODEL))
    assert store.versions() == [1] and store.read_file(1, "model.skops") == MODEL
    assert not backend_for(store.base).exists(store.base.child(".staging", "v1.claim"))


def test_a_writer_that_claims_a_version_committed_meanwhile_writes_nothing(output_uri: str, make_metadata) -> None:
    """The other writer committed and released its claim between this writer's first check and its claim."""
    base = parse_uri(output_uri)
    store = open_store(output_uri)
    store.commit_version(1, {"model.skops": MODEL}, make_metadata(1, MODEL))

    class LateBackend(RecordingBackend):
        first_check = True

        def exists(self, uri: StorageUri) -> bool:
            if uri.path.endswith("v1/metadata.json") and self.first_check:
                self.first_check = False
                return False  # this check ran before the other writer committed
            return self.inner.exists(uri)

    backend = LateBackend(backend_for(base))
    with pytest.raises(VersionExistsError, match="version 1 already exists"):
        ArtifactStore(base, backend).commit_version(1, {"model.skops": b"late"}, make_metadata(1, b"late"))
    assert not any(c.startswith("move") or c.endswith("v1/metadata.json") for c in backend.calls)
    assert store.read_file(1, "model.skops") == MODEL
    assert not backend.exists(base.child(".staging", "v1.claim"))


def test_commit_refuses_metadata_that_does_not_describe_the_version(output_uri: str, make_metadata) -> None:
    store = open_store(output_uri)
    with pytest.raises(InvalidMetadataError, match="metadata.version 2 differs from the version 1"):
        store.commit_version(1, {"model.skops": MODEL}, make_metadata(2, MODEL))
    with pytest.raises(InvalidMetadataError, match="model.sha256"):
        store.commit_version(1, {"model.skops": MODEL},
                             {**make_metadata(1, MODEL), "model": {"sha256": "x", "size": 1}})
    assert store.versions() == []


def test_file_names_cannot_escape_the_version_folder(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}")
    with pytest.raises(ValueError, match="not a plain file name"):
        store.read_file(1, "../../etc/passwd")


def test_invalid_metadata_names_each_bad_field(make_metadata) -> None:
    bad = make_metadata(1, MODEL)
    bad["task"] = "clustering"
    del bad["dataset"]["sha256"]
    with pytest.raises(InvalidMetadataError) as err:
        validate_metadata(bad)
    assert "task:" in str(err.value) and "dataset.sha256: Field required" in str(err.value)


def test_read_object_reads_single_files_from_each_store(tmp_path: Path, s3) -> None:
    (tmp_path / "d.csv").write_bytes(b"a,b\n1,2\n")
    assert read_object(f"file://{tmp_path}/d.csv") == b"a,b\n1,2\n"
    assert read_object(s3.put("data/d.csv", b"x")) == b"x"
    with pytest.raises(ObjectNotFoundError, match=f"s3://{s3.name}/data/missing.csv: not found"):
        read_object(s3.uri("data/missing.csv"))
    with pytest.raises(ObjectNotFoundError, match="bucket 'no-such-bucket' does not exist"):
        read_object("s3://no-such-bucket/x.csv")


def test_metadata_json_is_plain_camel_case_json(tmp_path: Path, make_metadata) -> None:
    store = open_store(f"file://{tmp_path}")
    store.commit_version(3, {"model.skops": MODEL}, make_metadata(3, MODEL))
    on_disk = json.loads((tmp_path / "v3" / "metadata.json").read_text())
    assert on_disk["predictionReference"]["format"] == "modelloop.sketch/v1"
    assert on_disk["model"]["trustedTypes"] == []


def test_explicit_credentials_replace_the_environment(s3, make_metadata, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in s3.server.env:  # what the operator does: one Secret per resource, nothing in its own env
        monkeypatch.delenv(key)
    store = open_store(s3.uri("models"), credentials=s3.server.env)
    store.commit_version(1, {"model.skops": MODEL}, make_metadata(1, MODEL))
    assert store.versions() == [1]
    assert s3.get("models/v1/model.skops") == MODEL


# ---------------------------------------------------------------------------------------------------
# Deleting a version (retention, spec.output.keepVersions).

def test_a_deleted_version_is_gone_with_its_files_and_the_others_are_untouched(output_uri: str, make_metadata) -> None:
    store = open_store(output_uri)
    for version in (1, 2, 10):
        store.commit_version(version, {"model.skops": MODEL, "model.onnx": b"graph"}, make_metadata(version, MODEL))
    before = {v: store.read_file(v, "metadata.json") for v in (2, 10)}

    store.delete_version(1)
    assert store.versions() == [2, 10] and store.layout() == ([2, 10], [])
    assert sorted(backend_for(store.base).list_keys(store.base)) == [
        f"v{v}/{f}" for v in (10, 2) for f in ("metadata.json", "model.onnx", "model.skops")]
    assert {v: store.read_file(v, "metadata.json") for v in (2, 10)} == before  # v1 is not a prefix of v10
    with pytest.raises(ObjectNotFoundError, match="version 1 does not exist"):
        store.read_metadata(1)
    store.delete_version(1)  # again: nothing there, no error


def test_deletion_removes_metadata_json_first_so_a_half_deleted_version_is_no_version(output_uri: str,
                                                                                      make_metadata) -> None:
    base = parse_uri(output_uri)
    store = ArtifactStore(base, backend_for(base))
    store.commit_version(1, {"model.skops": MODEL}, make_metadata(1, MODEL))
    store.commit_version(2, {"model.skops": MODEL}, make_metadata(2, MODEL))

    class Interrupted(Exception):
        pass

    calls = []

    class Recording:
        """Notes the deletes, and dies at the first one that is not metadata.json (a crash mid-deletion)."""

        def __getattr__(self, name):
            method = getattr(backend_for(base), name)
            if name not in ("delete", "delete_tree"):
                return method

            def recorded(uri):
                calls.append(f"{name} {uri}")
                if not str(uri).endswith("/metadata.json"):
                    raise Interrupted
                return method(uri)
            return recorded

    with pytest.raises(Interrupted):
        ArtifactStore(base, Recording()).delete_version(1)
    assert calls == [f"delete {output_uri}/v1/metadata.json", f"delete_tree {output_uri}/v1"]
    # What is left is files without metadata.json: not a version, for every reader, and incomplete in the layout.
    assert store.versions() == [2] and store.layout() == ([2], [1])
    with pytest.raises(ObjectNotFoundError):
        store.read_metadata(1)
    assert store.read_file(1, "model.skops") == MODEL  # still there...
    store.delete_version(1)  # ...until a later call finishes the job
    assert store.layout() == ([2], [])


def test_a_deletion_that_leaves_files_behind_says_so(tmp_path: Path, make_metadata) -> None:
    base = parse_uri(f"file://{tmp_path}/models")
    store = ArtifactStore(base, backend_for(base))
    store.commit_version(1, {"model.skops": MODEL}, make_metadata(1, MODEL))

    class KeepsFiles:
        def __getattr__(self, name):
            return (lambda uri: None) if name == "delete_tree" else getattr(backend_for(base), name)

    with pytest.raises(StorageError, match=r"v1: 1 file\(s\) could not be deleted \(model.skops\)"):
        ArtifactStore(base, KeepsFiles()).delete_version(1)
    assert store.versions() == []  # gone as a version all the same


@pytest.mark.parametrize("output, uri, version", [
    ("s3://bucket/models/churn", "s3://bucket/models/churn/v3", 3),
    ("s3://bucket/models/churn/", "s3://bucket//models/churn/v12/", 12),
    ("S3://bucket/models/churn", "s3://bucket/models/churn/v3", 3),
    ("file:///data/models", "file:///data/./models/v1", 1),
    ("pvc://claim/models", "pvc://claim/models/v7", 7),
    ("s3://bucket/models/churn", "s3://bucket/models/churn-2/v3", None),
    ("s3://bucket/models/churn", "s3://bucket/models/churn/sub/v3", None),
    ("s3://bucket/models/churn", "s3://other/models/churn/v3", None),
    ("s3://bucket/models/churn", "s3://bucket/models/churn", None),
    ("s3://bucket/models/churn", "s3://bucket/models/churn/v0", None),
    ("s3://bucket/models/churn", "ftp://bucket/models/churn/v3", None),
    ("s3://bucket/models/churn", None, None),
])
def test_version_under_recognises_a_version_of_an_output_whatever_its_spelling(output, uri, version) -> None:
    assert version_under(output, uri) == version
