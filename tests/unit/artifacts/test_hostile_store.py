"""A store written by someone hostile (issue 22, findings 5, 7 and 10 to 13): every byte read from it is bounded
before it is parsed, files are regular files, metadata.json is a strict schema, and refusals name the rule and
its setting, never what the refused file holds.

Where the point is memory, the loading runs in a child process under RLIMIT_AS (its address space after its
imports, plus a headroom) and reports its peak RSS growth: "bounded" is asserted, not hoped. Bounds are moved
through their environment variables, as an operator or a server would be configured.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.tree import DecisionTreeClassifier

import modelloop
from modelloop.artifacts import (ArtifactIntegrityError, InvalidMetadataError, StorageError, load_model, open_store,
                                 parse_metadata, serialize_model)

from tests.fixtures.artifacts import hostile_metadata, wide_reference

from .conftest import metadata_for

X = np.array([[0.0], [1.0], [2.0], [3.0]])
Y = np.array([0, 0, 1, 1])
MiB = 1024 * 1024


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def tree() -> bytes:
    """model.skops of a small decision tree, as the trainer serialises it."""
    return serialize_model(DecisionTreeClassifier(random_state=0).fit(X, Y))[0]


def forge(folder: Path, model: bytes, metadata: dict[str, Any] | bytes | None = None) -> str:
    """Write v1 of a store by hand (no commit_version: a hostile writer does not use it); its URI."""
    version = folder / "v1"
    version.mkdir(parents=True, exist_ok=True)
    (version / "model.skops").write_bytes(model)
    if metadata is None:
        metadata = metadata_for(1, model)
    (version / "metadata.json").write_bytes(metadata if isinstance(metadata, bytes) else json.dumps(metadata).encode())
    return f"file://{version}"


def rezip(data: bytes, replace: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    """The zip `data` with some entries' contents replaced (names kept), written with `compression`."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(out, "w", compression) as target:
        for info in source.infolist():
            target.writestr(info.filename, replace.get(info.filename, source.read(info)))
    return out.getvalue()


def array_entries(data: bytes) -> list[str]:
    schema = json.loads(zipfile.ZipFile(io.BytesIO(data)).read("schema.json"))
    found, stack = [], [schema]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            if value.get("__loader__") == "NdArrayNode" and value.get("type") == "numpy":
                found.append(value["file"])
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return sorted(found)


# ------------------------------------------------------------------------------------------- the child process

CHILD = """
import json, os, resource, sys, time
import numpy, sklearn.tree, skops.io, modelloop.artifacts

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

resource.setrlimit(resource.RLIMIT_AS, (status("VmSize") + HEADROOM, resource.RLIM_INFINITY))
with open("/proc/self/clear_refs", "w") as refs:
    refs.write("5")  # the peak RSS (VmHWM) starts again from here: what the imports held is not counted
start = status("VmRSS")
began = time.monotonic()
outcome = {}
try:
    outcome["result"] = run()
except BaseException as exc:
    outcome["error"] = type(exc).__name__
    outcome["message"] = str(exc)[:2000]
    outcome["kinds"] = [c.__name__ for c in type(exc).__mro__]
outcome["growth_mib"] = (status("VmHWM") - start) / 2 ** 20
outcome["seconds"] = time.monotonic() - began
print("OUTCOME " + json.dumps(outcome))
"""


def in_child(body: str, *, headroom_mib: int, timeout: float = 300, env: dict[str, str] | None = None,
             operator: bool = False) -> dict:
    """Run `def run(): <body>` in a child under RLIMIT_AS (its size after imports + `headroom_mib`); what it
    returned or raised, its peak RSS above its RSS after imports (growth_mib, from VmHWM) and how long it took. A child that does not finish
    within `timeout` fails the test: that is the hang. `operator`: import the operator's storage module first."""
    preload = "import modelloop.controllers.storage\n" if operator else ""
    code = (f"HEADROOM = {headroom_mib} * 1024 * 1024\n{preload}"
            f"def run():\n{textwrap.indent(textwrap.dedent(body), '    ')}\n{CHILD}")
    source = str(Path(modelloop.__file__).parents[1])
    environment = {**os.environ, "PYTHONPATH": source, "MALLOC_ARENA_MAX": "2", "OPENBLAS_NUM_THREADS": "1",
                   **(env or {})}
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                              env=environment)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the child did not finish within {timeout} s: it hangs")
    lines = [line for line in done.stdout.splitlines() if line.startswith("OUTCOME ")]
    assert lines, f"the child died (exit {done.returncode}): {done.stderr[-2000:]}"
    outcome = json.loads(lines[-1][len("OUTCOME "):])
    print(f"child: {outcome.get('error') or 'returned'}, peak RSS growth {outcome['growth_mib']:.0f} MiB, "
          f"{outcome['seconds']:.2f} s: {outcome.get('message') or str(outcome.get('result'))[:300]}")
    return outcome


def refused(outcome: dict, kind: type[BaseException], *words: str) -> str:
    assert outcome.get("error"), f"nothing was refused: {outcome}"
    assert kind.__name__ in outcome["kinds"], f"refused with {outcome['error']}: {outcome['message']}"
    for word in words:
        assert word in outcome["message"], outcome["message"]
    return outcome["message"]


# ----------------------------------------------------------------------------------- files (findings 10, 13)

def test_a_metadata_json_linked_to_a_file_outside_the_store_is_refused(tmp_path: Path, tree: bytes) -> None:
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps(metadata_for(1, tree)))
    uri = forge(tmp_path / "store", tree)
    (tmp_path / "store" / "v1" / "metadata.json").unlink()
    (tmp_path / "store" / "v1" / "metadata.json").symlink_to(elsewhere)

    with pytest.raises(StorageError, match="symbolic link in the path; a store holds regular files only"):
        load_model(uri)


def test_a_version_folder_linked_elsewhere_is_refused(tmp_path: Path, tree: bytes) -> None:
    forge(tmp_path / "elsewhere", tree)
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "v1").symlink_to(tmp_path / "elsewhere" / "v1")

    with pytest.raises(StorageError, match="symbolic link in the path"):
        load_model(f"file://{tmp_path}/store/v1")
    with pytest.raises(StorageError, match="symbolic link in the path"):
        open_store(f"file://{tmp_path}/store").read_metadata(1)


def test_a_store_whose_own_folder_is_a_link_still_loads(tmp_path: Path, tree: bytes) -> None:
    forge(tmp_path / "real", tree)
    (tmp_path / "mounted").symlink_to(tmp_path / "real")  # a mount point or a configured path may be a link

    assert load_model(f"file://{tmp_path}/mounted/v1").model.predict(X).tolist() == Y.tolist()


def test_a_model_file_linked_to_dev_zero_is_refused_at_once(tmp_path: Path, tree: bytes) -> None:
    uri = forge(tmp_path / "store", tree)
    (tmp_path / "store" / "v1" / "model.skops").unlink()
    (tmp_path / "store" / "v1" / "model.skops").symlink_to("/dev/zero")

    outcome = in_child(f"modelloop.artifacts.load_model({uri!r})", headroom_mib=256)
    refused(outcome, StorageError, "a store holds regular files only")
    assert outcome["growth_mib"] < 32


@pytest.mark.parametrize("reader", ["server", "operator"])
def test_a_fifo_in_place_of_metadata_json_is_refused_without_hanging(tmp_path: Path, tree: bytes,
                                                                       reader: str) -> None:
    uri = forge(tmp_path / "store", tree)
    (tmp_path / "store" / "v1" / "metadata.json").unlink()
    os.mkfifo(tmp_path / "store" / "v1" / "metadata.json")  # nobody ever writes to it

    call = (f"modelloop.artifacts.load_model({uri!r})" if reader == "server" else
            f"modelloop.controllers.storage.verified_metadata('ns', {uri[:-3]!r}, 1, {{}})")
    outcome = in_child(call, headroom_mib=256, env={"MODELLOOP_OPERATOR_LOCAL_STORAGE": "true"},
                       operator=reader == "operator")
    refused(outcome, StorageError, "not a regular file; a store holds regular files only")


def test_an_oversized_metadata_json_is_refused_before_it_is_held(tmp_path: Path, tree: bytes) -> None:
    uri = forge(tmp_path / "store", tree)
    with open(tmp_path / "store" / "v1" / "metadata.json", "wb") as f:
        f.truncate(256 * MiB)  # sparse: no disk, but 256 MiB for whoever reads it whole

    outcome = in_child(f"modelloop.artifacts.load_model({uri!r})", headroom_mib=512)
    refused(outcome, ArtifactIntegrityError, "metadata.json is larger than the limit of 8,388,608",
            "MODELLOOP_MAX_METADATA_BYTES")
    assert outcome["growth_mib"] < 48


def test_a_refused_model_file_is_not_described(tmp_path: Path, tree: bytes) -> None:
    """The digest and size of what was read would tell about it: a link's target, or a file put there."""
    secret = tmp_path / "secret"
    secret.write_bytes(b"the operator's own secret " * 50)
    told = (sha256(secret.read_bytes()), f"{len(secret.read_bytes())} bytes")

    swapped = forge(tmp_path / "swapped", tree)
    (tmp_path / "swapped" / "v1" / "model.skops").write_bytes(secret.read_bytes())
    linked = forge(tmp_path / "linked", tree)
    (tmp_path / "linked" / "v1" / "model.skops").unlink()
    (tmp_path / "linked" / "v1" / "model.skops").symlink_to(secret)

    for uri in (swapped, linked):
        for pinned in (None, sha256(tree)):
            with pytest.raises((ArtifactIntegrityError, StorageError)) as refusal:
                load_model(uri, expected_sha256=pinned)
            assert not any(word in str(refusal.value) for word in told), str(refusal.value)
    with pytest.raises(ArtifactIntegrityError, match="sha256 or size does not match metadata.json"):
        load_model(swapped)


# ------------------------------------------------------------------------------------ metadata (findings 5, 11)

@pytest.mark.parametrize("dtype", ["(100000000,)f8", "V800000000", "<U100000", "O,O", "datetime64[ns]", "int"])
def test_predict_dtype_outside_the_closed_set_is_refused(tmp_path: Path, tree: bytes, dtype: str) -> None:
    metadata = {**metadata_for(1, tree), "onnx": {"file": "model.onnx", "format": "onnx", "sha256": "0" * 64,
                                                  "size": 1, "predictDtype": dtype}}
    with pytest.raises(InvalidMetadataError, match="onnx.predictDtype: Value error, must be one of"):
        load_model(forge(tmp_path, tree, metadata), runtime="sklearn")


@pytest.mark.parametrize("dtype", ["<i8", "<i4", "|b1", "<f8", "<f4", "|O", "<U12", "|u1"])
def test_predict_dtypes_scikit_learn_gives_are_accepted(tree: bytes, dtype: str) -> None:
    metadata = {**metadata_for(1, tree), "onnx": {"file": "model.onnx", "format": "onnx", "sha256": "0" * 64,
                                                  "size": 1, "predictDtype": dtype}}
    assert parse_metadata(json.dumps(metadata).encode()).onnx.predict_dtype == dtype


CALIBRATION = {"method": "isotonic", "x": [0.5, 0.9], "y": [0.4, 0.95], "eceBefore": 0.06, "eceAfter": 0.02,
               "eceIsotonic": 0.02, "rows": 500}
SKETCH = {"format": "modelloop.sketch/v1", "rows": 3, "features": [
    {"name": "x", "kind": "numeric", "edges": [0.5, 1.5], "counts": [1, 1, 1], "missing": 0}]}


def _with(document: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    document = json.loads(json.dumps(document))
    *parents, last = path.split(".")
    target = document
    for key in parents:
        target = target[int(key)] if isinstance(target, list) else target[key]
    target[last] = value
    return document


@pytest.mark.parametrize("path", ["padding", "model.padding", "training.padding", "schema.features.0.padding",
                                  "reference.padding", "reference.features.0.padding", "calibration.padding",
                                  "metric.padding"])
def test_keys_the_schema_does_not_know_are_refused_wherever_they_are(tree: bytes, path: str) -> None:
    document = {**metadata_for(1, tree), "reference": SKETCH, "calibration": CALIBRATION}
    parse_metadata(json.dumps(document).encode())  # the document itself is valid
    with pytest.raises(InvalidMetadataError, match="Extra inputs are not permitted"):
        parse_metadata(json.dumps(_with(document, path, [0] * 1000)).encode())


def test_sketches_longer_than_any_trainer_writes_are_refused(tree: bytes) -> None:
    edges = [float(i) for i in range(20_000)]
    wide = {"format": "modelloop.sketch/v1", "rows": 0, "features": [
        {"name": "x", "kind": "numeric", "edges": edges, "counts": [0] * (len(edges) + 1), "missing": 0}]}
    with pytest.raises(InvalidMetadataError, match="reference.*at most 10000 items"):
        parse_metadata(json.dumps({**metadata_for(1, tree), "reference": wide}).encode())


def test_metadata_values_and_nesting_are_counted_before_it_is_parsed(tree: bytes, monkeypatch) -> None:
    deep = {**metadata_for(1, tree), "estimator": {"class": "x", "params": {"p": json.loads("[" * 200 + "]" * 200)}}}
    with pytest.raises(ArtifactIntegrityError, match=r"nests JSON deeper than the limit of 100 "
                                                     r"\(MODELLOOP_MAX_ARTIFACT_JSON_DEPTH\)"):
        parse_metadata(json.dumps(deep).encode())

    many = {**metadata_for(1, tree), "estimator": {"class": "x", "params": {"p": [{}] * 600_000}}}
    with pytest.raises(ArtifactIntegrityError, match=r"more JSON values than the limit of 500,000 "
                                                     r"\(MODELLOOP_MAX_METADATA_NODES\)"):
        parse_metadata(json.dumps(many).encode())
    monkeypatch.setenv("MODELLOOP_MAX_METADATA_NODES", "2000000")
    parse_metadata(json.dumps(many).encode())  # a setting, not a constant


# What pydantic builds for a refused document grows with its errors: one per unknown key, one per bad item of a
# list and per member of a union for each (a Category is five). Before (each within every byte and value bound):
# unknown-keys +204 MiB and 1.5 s, union-items (0.9 MB) a million errors, +857 MiB and 5 s.
ERROR_BOMBS = ["unknown-keys", "union-items"]


@pytest.mark.parametrize("bomb", ERROR_BOMBS)
def test_a_document_that_would_fan_out_into_errors_is_refused_at_its_first_ones(tmp_path: Path, tree: bytes,
                                                                                 bomb: str) -> None:
    path = tmp_path / "metadata.json"
    path.write_bytes(hostile_metadata(bomb, metadata_for(1, tree)))
    outcome = in_child(f"""
        from modelloop.artifacts import parse_metadata
        parse_metadata(open({str(path)!r}, "rb").read())
    """, headroom_mib=1024)
    message = refused(outcome, InvalidMetadataError, "is not a valid modelloop.artifact/v1 document")
    assert message.count(";") < 20  # the first errors, not a list of all
    assert outcome["growth_mib"] < 128 and outcome["seconds"] < 3, outcome


def _padded(version: int, model: bytes, target_bytes: int) -> bytes:
    """metadata.json of `version`, padded with an unknown key holding empty objects: 3 bytes, 64 parsed."""
    head = json.dumps(metadata_for(version, model))[:-1]
    count = (target_bytes - len(head) - 20) // 3
    return (head + ', "padding": [' + "{}," * count + "{}]}").encode()


def _wide(version: int, model: bytes, features: int) -> bytes:
    """A valid metadata.json whose reference sketch has `features` numeric features (wide_reference)."""
    return json.dumps({**metadata_for(version, model), "reference": wide_reference(features)}).encode()


def test_many_padded_metadata_documents_keep_the_operator_under_a_memory_bound(tmp_path: Path) -> None:
    """Finding 5: padded documents were cached whole (256 entries, no byte bound): 3 took the operator from
    208 MiB to 2.5 GiB. Now an unknown key refuses the document before it is parsed (its values are counted
    first), and what is cached is a summary, within MODELLOOP_VERIFIED_CACHE_BYTES in all."""
    model = b"a model file, as far as the operator is concerned"
    store = tmp_path / "store"
    for version in range(1, 25):
        (store / f"v{version}").mkdir(parents=True)
        (store / f"v{version}" / "model.skops").write_bytes(model)
        document = _padded(version, model, 7 * MiB) if version % 2 else _wide(version, model, 1500)
        (store / f"v{version}" / "metadata.json").write_bytes(document)

    outcome = in_child(f"""
        from modelloop.controllers import storage
        errors = {{}}
        for version in range(1, 25):
            try:
                storage.verified_metadata("ns", {f"file://{store}"!r}, version, {{}})
            except Exception as exc:
                errors[version] = str(exc)
        return {{"cached": len(storage._verified), "cached_bytes": storage._verified.nbytes,
                "budget": storage._verified.max_bytes, "errors": errors}}
    """, headroom_mib=768, env={"MODELLOOP_OPERATOR_LOCAL_STORAGE": "true"}, operator=True)

    assert outcome["growth_mib"] < 256, outcome
    result = outcome["result"]
    assert sorted(map(int, result["errors"])) == list(range(1, 25, 2))  # every padded one, and only those
    assert all("MODELLOOP_MAX_METADATA_NODES" in e for e in result["errors"].values())
    assert 0 < result["cached_bytes"] <= result["budget"] == 64 * MiB


def test_the_operator_keeps_only_the_fields_it_uses(tmp_path: Path, tree: bytes, monkeypatch) -> None:
    from modelloop.controllers import storage

    monkeypatch.setenv("MODELLOOP_OPERATOR_LOCAL_STORAGE", "true")
    monkeypatch.setattr(storage, "SETTINGS", storage.Settings())
    document = {**metadata_for(1, tree), "reference": SKETCH, "calibration": CALIBRATION}
    forge(tmp_path / "store", tree, document)

    verified = storage.verified_metadata("ns-fields", f"file://{tmp_path}/store", 1, {})
    assert set(verified["metadata"]) == {"version", "task", "metric", "metrics", "schema", "dataset", "reference"}
    assert verified["metadata"]["schema"]["features"] == [{"name": "x", "dtype": "float64", "categorical": False}]
    assert verified["metadata"]["reference"] == SKETCH
    assert verified["metadataSha256"] == sha256((tmp_path / "store" / "v1" / "metadata.json").read_bytes())


# ----------------------------------------------------------------------------------- model files (finding 7, 12)

def _schema_bomb(values: int) -> bytes:
    """A model.skops whose schema.json is `values` empty objects: 3 bytes each, 64 once parsed."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("schema.json", '{"protocol": 2, "bomb": [' + "{}," * values + "{}]}")
    return out.getvalue()


def test_a_skops_schema_bomb_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    """Finding 7: a 64 KB model.skops peaked at 1.9 GiB in json.loads before any type was checked."""
    bomb = _schema_bomb(20_000_000)  # 60 MB of schema.json in ~60 KB
    assert len(bomb) < 256 * 1024
    uri = forge(tmp_path / "store", bomb)

    outcome = in_child(f"modelloop.artifacts.load_model({uri!r})", headroom_mib=512)
    refused(outcome, ArtifactIntegrityError, "MODELLOOP_MAX_MODEL_COMPRESSION_RATIO")  # the first bound it meets
    assert outcome["growth_mib"] < 128

    relaxed = in_child(f"modelloop.artifacts.load_model({uri!r})", headroom_mib=512,
                       env={"MODELLOOP_MAX_MODEL_COMPRESSION_RATIO": "100000"})
    refused(relaxed, ArtifactIntegrityError, "schema.json has more JSON values than the limit of 2,000,000",
            "MODELLOOP_MAX_SKOPS_SCHEMA_NODES")
    assert relaxed["growth_mib"] < 192


def test_a_deeply_nested_skops_schema_is_refused_naming_the_bound(tmp_path: Path) -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("schema.json", '{"protocol": 2, "deep": ' + "[" * 5000 + "]" * 5000 + "}")
    with pytest.raises(ArtifactIntegrityError, match="MODELLOOP_MAX_ARTIFACT_JSON_DEPTH"):
        load_model(forge(tmp_path, out.getvalue()))


def test_a_json_document_hidden_in_a_string_node_is_counted_too(tmp_path: Path, tree: bytes) -> None:
    """skops json.loads the content of a JsonNode (a trusted builtins.str) when it builds it. Written with
    escapes (\\u002c for a comma), the document in that string is invisible to the count of schema.json."""
    schema = json.loads(zipfile.ZipFile(io.BytesIO(tree)).read("schema.json"))
    node = next(n for n in _nodes(schema) if n.get("__loader__") == "JsonNode")
    node["content"] = "HIDDEN"
    escaped = "\\u005b" + "\\u007b\\u007d\\u002c" * 3_000_000 + "\\u007b\\u007d\\u005d"  # [{},{},...{}]
    text = json.dumps(schema).replace('"HIDDEN"', f'"{escaped}"')
    assert text.count(",") < 10_000 and len(text) < 64 * MiB  # what schema.json's own count sees
    uri = forge(tmp_path / "store", rezip(tree, {"schema.json": text.encode()}))

    outcome = in_child(f"modelloop.artifacts.load_model({uri!r})", headroom_mib=384)
    refused(outcome, ArtifactIntegrityError, "a JSON node of the model file has more JSON values than",
            "MODELLOOP_MAX_SKOPS_SCHEMA_NODES")
    assert outcome["growth_mib"] < 256


def _nodes(value: Any):
    if isinstance(value, dict):
        yield value
        for inner in value.values():
            yield from _nodes(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _nodes(inner)


def with_zeros(data: bytes, name: str, size: int) -> bytes:
    """The zip `data` with entry `name` replaced by a .npy of `size` zero bytes, deflated, written in chunks."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (size,)})
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            if info.filename != name:
                target.writestr(info.filename, source.read(info))
                continue
            with target.open(name, "w", force_zip64=True) as entry:
                entry.write(header.getvalue())
                chunk = bytes(MiB)
                for _ in range(size // MiB):
                    entry.write(chunk)
                entry.write(bytes(size % MiB))
    return out.getvalue()


def test_a_deflate_bomb_in_an_array_entry_is_refused_before_it_is_unpacked(tmp_path: Path, tree: bytes) -> None:
    """Finding 12: 1 GiB of zeros in 1 MB loaded at 2.3 GiB."""
    bomb = with_zeros(tree, array_entries(tree)[0], 768 * MiB)
    assert len(bomb) < 2 * MiB
    uri = forge(tmp_path / "store", bomb)

    outcome = in_child(f"modelloop.artifacts.load_model({uri!r})", headroom_mib=512)
    refused(outcome, ArtifactIntegrityError, "more bytes, as a multiple of its size, than the limit of 10",
            "MODELLOOP_MAX_MODEL_COMPRESSION_RATIO")
    assert outcome["growth_mib"] < 64

    small = in_child(f"modelloop.artifacts.load_model({uri!r})", headroom_mib=512,
                     env={"MODELLOOP_MAX_MODEL_COMPRESSION_RATIO": "100000", "MODELLOOP_MAX_MODEL_ENTRY_BYTES":
                          str(64 * MiB)})
    refused(small, ArtifactIntegrityError, "declares an entry larger than the limit of 67,108,864",
            "MODELLOOP_MAX_MODEL_ENTRY_BYTES")


def _lying(data: bytes, name: str, declared: int) -> bytes:
    """`data` whose central directory says entry `name` unpacks to `declared` bytes (its CRC left as is)."""
    archive = bytearray(data)
    position = archive.find(b"PK\x01\x02")
    while position >= 0:
        length = struct.unpack_from("<H", archive, position + 28)[0]
        if archive[position + 46:position + 46 + length] == name.encode():
            struct.pack_into("<L", archive, position + 24, declared)  # the uncompressed size
            return bytes(archive)
        position = archive.find(b"PK\x01\x02", position + 46)
    raise AssertionError(f"no entry {name}")


def test_an_entry_that_unpacks_past_its_declared_size_is_refused(tmp_path: Path, tree: bytes) -> None:
    """The sizes a zip declares are the writer's word: what comes out is counted, and stops at the declared size."""
    name = array_entries(tree)[0]
    liar = _lying(with_zeros(tree, name, 64 * MiB), name, 1024)
    uri = forge(tmp_path / "store", liar)

    outcome = in_child(f"modelloop.artifacts.load_model({uri!r})", headroom_mib=256,
                       env={"MODELLOOP_MAX_MODEL_COMPRESSION_RATIO": "100000"})
    refused(outcome, ArtifactIntegrityError)
    assert outcome["growth_mib"] < 32


def test_an_array_whose_header_declares_more_than_it_holds_is_refused(tmp_path: Path, tree: bytes) -> None:
    name = array_entries(tree)[0]
    header = io.BytesIO()  # numpy allocates 8 GB from this header before it finds 80 bytes of data
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (10 ** 9,)})
    uri = forge(tmp_path / "store", rezip(tree, {name: header.getvalue() + bytes(80)}))

    with pytest.raises(ArtifactIntegrityError, match=r"array \(.npy\) whose header declares another size"):
        load_model(uri)


def test_zip_entries_are_counted_before_zipfile_reads_them(tmp_path: Path, tree: bytes, monkeypatch) -> None:
    many = io.BytesIO()
    with zipfile.ZipFile(many, "w") as archive:
        with zipfile.ZipFile(io.BytesIO(tree)) as source:
            for info in source.infolist():
                archive.writestr(info.filename, source.read(info))
        for i in range(2000):
            archive.writestr(f"{i}.bin", b"")
    uri = forge(tmp_path / "store", many.getvalue())
    load_model(uri)  # unreferenced entries are harmless within the bound
    monkeypatch.setenv("MODELLOOP_MAX_MODEL_ENTRIES", "1000")
    with pytest.raises(ArtifactIntegrityError, match=r"more entries than the limit of 1,000 "
                                                     r"\(MODELLOOP_MAX_MODEL_ENTRIES\)"):
        load_model(uri)


def test_the_entry_count_agrees_with_zipfile_for_zip64_archives() -> None:
    from modelloop.artifacts.limits import DEFAULT_LIMITS
    from modelloop.artifacts.model import _count_entries

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:  # more than 65,535 entries: zipfile writes zip64 records
        for i in range(70_000):
            archive.writestr(str(i), b"")
    data = out.getvalue()
    assert b"PK\x06\x06" in data[-200:]
    assert _count_entries(data, DEFAULT_LIMITS) == len(zipfile.ZipFile(io.BytesIO(data)).infolist()) == 70_000
    commented = io.BytesIO()
    with zipfile.ZipFile(commented, "w") as archive:
        archive.writestr("a", b"x")
        archive.comment = b"an archive comment: zipfile searches the end record before it"
    assert _count_entries(commented.getvalue(), DEFAULT_LIMITS) == 1


def test_a_forest_the_trainer_writes_passes_every_default_bound() -> None:
    from sklearn.ensemble import RandomForestClassifier

    from modelloop.artifacts import deserialize_model

    rng = np.random.default_rng(0)
    features = rng.normal(size=(2000, 8))
    model = RandomForestClassifier(n_estimators=100, random_state=0).fit(features, features[:, 0] > 0)
    data, _ = serialize_model(model)
    assert (deserialize_model(data).predict(features) == model.predict(features)).all()
