"""Model files: serialise with skops, load only after the digests and the exact type list pass (model.skops),
or the digests and the ONNX checks (model.onnx, onnx_model.py).

A pickle runs arbitrary code when loaded; skops instead rebuilds objects from a description (schema.json
inside a zip) and imports, calls or instantiates only the names that description holds. Which names we
let it use is decided here, from two lists defined in code and never from the artifact:

- `TRUSTED_NODES` (trusted_types.py, generated from the estimators the trainer allows): for each kind of
  skops node, the exact type names a model written by modelloop's trainer contains;
- `HARMLESS_UFUNCS`: the numpy ufuncs a function node may name (element-wise arithmetic, nothing that
  reads files, evaluates strings or reaches Python callables).

`check_model_file` walks schema.json itself and refuses (UntrustedTypeError) any node outside those lists
before skops parses the file; only then is `skops.io.loads` called, trusting the names just checked.
`metadata.json`'s `model.trustedTypes` is informational: loading never reads it.

Before any of that, the file is held to the bounds of limits.py (ArtifactLimitError): every read is capped
(metadata.json, then the model at the size metadata.json records), the zip's entries are counted before
zipfile builds them, each entry is unpacked once, in chunks, counting against its declared size, the total
and the compression ratio, before skops unpacks it for real, and schema.json's values and nesting are
counted before it is parsed.
"""
from __future__ import annotations

import hashlib
import io
import json
import struct
import zipfile
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import numpy as np

from .errors import (ArtifactIntegrityError, ArtifactLimitError, OnnxOnlyError, OnnxUnavailableError,
                     UntrustedTypeError)
from .estimator_state import prepare_loaded_model
from .limits import ArtifactLimits, count_json, current_limits, load_json
from .metadata import METADATA_FILE, SKOPS, ArtifactMetadata, parse_metadata
from .native_model import check_native_model
from .onnx_model import OnnxPredictor
from .stores import ArtifactStore, split_version_uri
from .trusted_types import BIT_GENERATORS, SKOPS_PROTOCOLS, TRUSTED_NODES

FUNCTION_NODE = "FunctionNode"
# numpy ufuncs a model file may reference as functions (e.g. FunctionTransformer(func=numpy.log1p)): pure
# element-wise math on arrays. Spelled as skops records them (`numpy.<name>`); the trainer itself stores none.
HARMLESS_UFUNCS = frozenset(f"numpy.{name}" for name in (
    "absolute", "add", "arccos", "arccosh", "arcsin", "arcsinh", "arctan", "arctanh", "cbrt", "ceil", "cos",
    "cosh", "divide", "exp", "exp2", "expm1", "fabs", "floor", "fmax", "fmin", "isfinite", "isinf", "isnan",
    "log", "log10", "log1p", "log2", "logaddexp", "maximum", "minimum", "multiply", "negative", "positive",
    "power", "reciprocal", "rint", "sign", "sin", "sinh", "sqrt", "square", "subtract", "tan", "tanh", "trunc",
))
SCHEMA_FILE = "schema.json"
# zipfile unpacks these in bounded steps; bzip2 and lzma entries come out of one read whole. The trainer stores.
_COMPRESSIONS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}
_NPY_MAGIC = b"\x93NUMPY"
_CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class SkopsNode:
    """One node of a skops file: its loader (how skops rebuilds it) and the name skops imports for it."""

    loader: str
    name: str
    json: str | None = None  # a JsonNode's content: JSON text that skops parses when it builds the node


def read_skops_schema(data: bytes, limits: ArtifactLimits | None = None) -> dict[str, Any]:
    """schema.json of the skops file `data` (a zip), parsed as plain JSON once the zip passed `check_zip`:
    nothing is imported. `limits`: default, the environment's settings (limits.py)."""
    limits = limits or current_limits()
    try:
        with zipfile.ZipFile(io.BytesIO(check_zip(data, limits))) as archive:
            info = archive.getinfo(SCHEMA_FILE)
            if info.file_size > limits.schema_bytes:
                raise limits.refuse("schema_bytes", f"the model file's {SCHEMA_FILE} is larger than")
            schema = load_json(archive.read(info), limits, "schema_nodes", f"the model file's {SCHEMA_FILE}")
    except ArtifactIntegrityError:
        raise
    except (zipfile.BadZipFile, KeyError, ValueError, RecursionError, OSError, RuntimeError) as exc:
        # a checksum on garbage can still match; say what is wrong without echoing the content
        raise ArtifactIntegrityError(f"the model file is not a readable skops file ({type(exc).__name__})") from None
    if not isinstance(schema, dict):
        raise ArtifactIntegrityError(f"the model file's {SCHEMA_FILE} is not a JSON object")
    return schema


def check_zip(data: bytes, limits: ArtifactLimits) -> bytes:
    """`data`, once its entries are within `limits` (ArtifactLimitError otherwise): how many (counted in the
    central directory before zipfile builds one object per entry), how they are compressed, and how big each
    and all of them are, as declared and as unpacked, in chunks, stopping at the first byte past a bound.
    A .npy entry must also hold exactly the array its header declares (numpy allocates from the header)."""
    entries = _count_entries(data, limits)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        infos = archive.infolist()
        if len(infos) != entries:
            raise zipfile.BadZipFile("central directory")
        declared = 0
        for info in infos:
            if info.compress_type not in _COMPRESSIONS:
                raise ArtifactLimitError(f"the model file has an entry compressed otherwise than "
                                         f"{' or '.join(_COMPRESSIONS.values())}; refusing to load")
            if info.file_size > limits.zip_entry_bytes:
                raise limits.refuse("zip_entry_bytes", "the model file declares an entry larger than")
            declared += info.file_size
        _check_unpacked(declared, len(data), limits, "declares")
        unpacked = 0
        for info in infos:  # the sizes above are the file's word: count what comes out
            unpacked += _unpack_entry(archive, info, limits)
            _check_unpacked(unpacked, len(data), limits, "unpacks")
    return data


def _check_unpacked(total: int, size: int, limits: ArtifactLimits, how: str) -> None:
    if total > limits.zip_total_bytes:
        raise limits.refuse("zip_total_bytes", f"the model file {how} more bytes in all than")
    if total > limits.zip_ratio * max(size, 1):
        raise limits.refuse("zip_ratio", f"the model file {how} more bytes, as a multiple of its size, than")


def _unpack_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limits: ArtifactLimits) -> int:
    """Unpack one entry in chunks, holding one at a time; its size once unpacked."""
    size, expected = 0, None
    with archive.open(info) as stream:
        while chunk := stream.read(_CHUNK):
            if size == 0 and chunk.startswith(_NPY_MAGIC):
                expected = _npy_size(chunk)
            size += len(chunk)
            if size > min(info.file_size, limits.zip_entry_bytes):
                raise limits.refuse("zip_entry_bytes", "the model file unpacks an entry larger than its "
                                                       "declared size or")
    if expected is not None and size != expected:
        raise ArtifactLimitError("the model file has an array (.npy) whose header declares another size than "
                                 "the data it holds; refusing to load")
    return size


def _npy_size(head: bytes) -> int:
    """The size of a .npy file whose first bytes are `head`: header plus shape x item size. numpy allocates the
    declared array before reading its data, so the declaration must match what is there."""
    fp = io.BytesIO(head)
    version = np.lib.format.read_magic(fp)
    read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if read_header is None:
        raise ValueError("npy format version")
    shape, _, dtype = read_header(fp)
    if dtype.hasobject:
        raise ValueError("npy object array")
    count = 1
    for length in shape:
        count *= int(length)
    return fp.tell() + count * dtype.itemsize


_END = struct.Struct("<4s4H2LH")  # end of central directory
_END64_LOCATOR = struct.Struct("<4sLQL")
_END64 = struct.Struct("<4sQ2H2L4Q")
_CENTRAL = 46  # a central directory record, before its name, extra field and comment


def _count_entries(data: bytes, limits: ArtifactLimits) -> int:
    """The records of the zip's central directory, located as zipfile locates it, counted without building
    them; more than limits.zip_entries is refused as soon as they are counted (zipfile holds ~300 bytes of
    objects per 46-byte record)."""
    location = len(data) - _END.size  # zipfile looks there first (no comment), then searches the last 64 KiB
    if location < 0 or data[location:location + 4] != b"PK\x05\x06" or data[-2:] != b"\0\0":
        location = data.rfind(b"PK\x05\x06", max(0, len(data) - _END.size - 0xFFFF))
    if location < 0 or location + _END.size > len(data):
        raise zipfile.BadZipFile("no end of central directory")
    size = _END.unpack_from(data, location)[5]
    start = location - size
    locator = location - _END64_LOCATOR.size
    if locator >= _END64.size and data[locator:locator + 4] == b"PK\x06\x07" \
            and data[locator - _END64.size:locator - _END64.size + 4] == b"PK\x06\x06":
        size = _END64.unpack_from(data, locator - _END64.size)[8]
        start = locator - _END64.size - size
    if start < 0:
        raise zipfile.BadZipFile("central directory")
    view = memoryview(data)[start:start + size]
    position = count = 0
    while position < len(view):
        if position + _CENTRAL > len(view):
            raise zipfile.BadZipFile("truncated central directory")
        name, extra, comment = struct.unpack_from("<3H", view, position + 28)
        position += _CENTRAL + name + extra + comment
        count += 1
        if count > limits.zip_entries:
            raise limits.refuse("zip_entries", "the model file has more entries than")
    return count


def skops_nodes(schema: dict[str, Any]) -> Iterator[SkopsNode]:
    """Every node of a skops schema (read_skops_schema), wherever it sits in the tree.

    A random Generator's bit generator is reported as a node of its own (loader "BitGenerator"): skops
    looks that class up by a name stored as plain data inside the node.
    """
    stack: list[Any] = [schema]
    while stack:
        value = stack.pop()
        if isinstance(value, list):
            stack.extend(value)
            continue
        if not isinstance(value, dict):
            continue
        if "__loader__" in value:
            loader, module, cls = value.get("__loader__"), value.get("__module__"), value.get("__class__")
            if not all(isinstance(part, str) and part for part in (loader, module, cls)):
                raise UntrustedTypeError(f"the model file has a malformed node (loader {_short(loader)}, module "
                                         f"{_short(module)}, class {_short(cls)}); refusing to load")
            content = value.get("content") if loader == "JsonNode" else None
            yield SkopsNode(loader, f"{module}.{cls}", content if isinstance(content, str) else None)
            if loader == "RandomGeneratorNode":
                yield SkopsNode("BitGenerator", f"numpy.random.{_bit_generator_name(value)}")
        stack.extend(value.values())


def _short(value: Any, limit: int = 200) -> str:
    """repr of a name read from a model file, cut: a refusal names the name, not a file's worth of it."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _listed(names: list[str], shown: int = 10) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(name if len(name) <= 200 else name[:200] + "…" for name in names[:shown]) + more


def check_model_file(data: bytes, limits: ArtifactLimits | None = None) -> list[str]:
    """Refuse (UntrustedTypeError) a skops file naming anything outside the exact lists, or (ArtifactLimitError)
    one beyond `limits`; return the names it uses, sorted (what `skops.io.loads` is then told to trust)."""
    refused, names = _screen(data, limits)
    if refused:
        raise UntrustedTypeError(
            f"the model file names types outside modelloop's exact allow-list: {_listed(refused)}; "
            f"modelloop's trainer never writes these, so the file was not written by it or was altered; "
            f"refusing to load")
    return names


def _screen(data: bytes, limits: ArtifactLimits | None = None) -> tuple[list[str], list[str]]:
    """(what is refused, with its node kind; every name used), each sorted."""
    limits = limits or current_limits()
    schema = read_skops_schema(data, limits)
    refused: set[str] = set()
    names: set[str] = set()
    inner = 0  # values in the JSON texts of JsonNodes, which skops parses too: bounded as schema.json is
    protocol = schema.get("protocol")
    if type(protocol) is not int or protocol not in SKOPS_PROTOCOLS:
        # older protocols rebuild some nodes with fewer checks; the trainer writes the current one
        refused.add(f"skops protocol {protocol!r} (trusted: {', '.join(map(str, sorted(SKOPS_PROTOCOLS)))})")
    for node in skops_nodes(schema):
        if node.json is not None and ("[" in node.json or "{" in node.json):  # a scalar is one value
            try:
                inner += count_json(node.json, limits, "schema_nodes", "a JSON node of the model file")
            except ValueError:
                raise ArtifactIntegrityError("the model file is not a readable skops file (JSON node)") from None
            if inner > limits.schema_nodes:
                raise limits.refuse("schema_nodes", "the JSON nodes of the model file's schema.json hold more "
                                                    "values in all than")
        if node.loader == FUNCTION_NODE:
            if node.name not in HARMLESS_UFUNCS:
                refused.add(f"{node.name} (function)")
        elif node.loader == "BitGenerator":
            if node.name not in BIT_GENERATORS:
                refused.add(f"{node.name} (random bit generator)")
        elif node.name not in TRUSTED_NODES.get(node.loader, ()):
            refused.add(f"{node.name} ({node.loader})")
        names.add(node.name)
    return sorted(refused), sorted(names)


def serialize_model(model: Any) -> tuple[bytes, list[str]]:
    """skops bytes of a fitted model, and the types skops does not trust by default (for information).

    Refuses (UntrustedTypeError) a model holding anything a server would refuse: a run fails rather
    than commit a version no server could load.
    """
    import skops.io

    data = skops.io.dumps(model)
    refused, _ = _screen(data)
    if refused:
        raise UntrustedTypeError(
            f"the model holds types outside modelloop's allow-list: {_listed(refused)}; the list holds what "
            f"the allowed estimators produce (python -m modelloop.training.trusted_types); choose other "
            f"params or another estimator")
    return data, sorted(skops.io.get_untrusted_types(data=data))


def deserialize_model(data: bytes, limits: ArtifactLimits | None = None) -> Any:
    """Load skops bytes after `check_model_file` passed; skops trusts exactly the names checked."""
    import skops.io

    trusted = check_model_file(data, limits)
    return prepare_loaded_model(skops.io.loads(data, trusted=trusted))


@dataclass(frozen=True)
class LoadedModel:
    model: Any  # the scikit-learn estimator; None when the version is served through model.onnx
    metadata: ArtifactMetadata
    uri: str
    onnx: OnnxPredictor | None = None

    @property
    def runtime(self) -> str:
        return "onnx" if self.onnx is not None else "sklearn"


RUNTIMES = ("auto", "onnx", "sklearn")


def load_model(version_uri: str, *, expected_sha256: str | None = None, expected_metadata_sha256: str | None = None,
               credentials: Mapping[str, str] | None = None, runtime: str = "sklearn",
               limits: ArtifactLimits | None = None) -> LoadedModel:
    """Load the model of `<output>/v<N>`, checking before anything is parsed:

    1. metadata.json's sha256 against `expected_metadata_sha256` (pinned by the operator), before parsing it;
    2. the file to load, its size and sha256 against metadata.json, and model.skops against `expected_sha256`
       (pinned; metadata.json must record that digest too);
    3. model.skops: every type it names against the exact lists (check_model_file), before skops reads it;
       model.onnx: no external data, only standard operators (check_onnx_file), before onnxruntime reads it.

    Every read and parse is bounded by `limits` (default: the environment's settings, limits.py): metadata.json
    is read up to limits.metadata_bytes, a model file up to the size metadata.json records, at most
    limits.model_bytes; files are regular files, never links, FIFOs or devices (backends.py).

    `runtime`: "sklearn" loads model.skops; "onnx" loads model.onnx, or raises OnnxUnavailableError when the
    version has none; "auto" loads model.onnx when the version has one, model.skops otherwise. model.onnx is
    pinned through metadata.json: with a pinned model digest but no pinned metadata digest, "auto" loads
    model.skops and "onnx" refuses. `credentials` (AWS_* keys) replace the environment's, as for open_store.

    An XGBoost or LightGBM version (model.format xgboost-json or lightgbm-text, native_model.py) is served
    through model.onnx only: "sklearn" raises OnnxOnlyError, "auto" and "onnx" read and verify the native file
    (size and sha256 against metadata.json and the pin, its format's first bytes), then load model.onnx.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")
    limits = limits or current_limits()
    store, version = split_version_uri(version_uri, credentials=credentials)
    metadata = _pinned_metadata(store, version, version_uri, expected_sha256, expected_metadata_sha256, limits)
    uri = store.version_uri(version)
    native = metadata.model.format != SKOPS
    if native and runtime == "sklearn":
        raise OnnxOnlyError(f"{version_uri} holds a {metadata.estimator.class_name} model ({metadata.model.format}), "
                            f"served through model.onnx only; use runtime auto or onnx")
    if runtime != "sklearn":
        onnx, unavailable = metadata.onnx, _onnx_unavailable(metadata, expected_sha256, expected_metadata_sha256)
        if unavailable is None and onnx is not None and onnx.file and onnx.sha256 and onnx.size is not None:
            if native:
                model_data = _read_verified(store, version, version_uri, metadata.model.file, metadata.model.sha256,
                                            metadata.model.size, pinned=expected_sha256, limits=limits)
                check_native_model(model_data, metadata.model.format)
                del model_data
            data = _read_verified(store, version, version_uri, onnx.file, onnx.sha256, onnx.size, limits=limits)
            return LoadedModel(model=None, metadata=metadata, uri=uri,
                               onnx=OnnxPredictor(data, onnx, metadata.schema_.features, limits))
        if runtime == "onnx" or native:
            raise OnnxUnavailableError(f"{version_uri} has no model.onnx to serve: {unavailable}")
    data = _read_verified(store, version, version_uri, metadata.model.file, metadata.model.sha256,
                          metadata.model.size, pinned=expected_sha256, limits=limits)
    return LoadedModel(model=deserialize_model(data, limits), metadata=metadata, uri=uri)


def _pinned_metadata(store: Any, version: int, version_uri: str, expected_sha256: str | None,
                     expected_metadata_sha256: str | None, limits: ArtifactLimits) -> ArtifactMetadata:
    """metadata.json, bounded, checked against its pinned digest before it is parsed, then against the version
    asked for and the pinned model digest."""
    metadata_uri = f"{store.version_uri(version)}/{METADATA_FILE}"
    try:
        raw_metadata = store.read_metadata_bytes(version, max_bytes=limits.metadata_bytes)
    except ArtifactLimitError:
        raise limits.refuse("metadata_bytes", f"{metadata_uri} is larger than") from None
    if expected_metadata_sha256 is not None and sha256_bytes(raw_metadata) != expected_metadata_sha256:
        raise ArtifactIntegrityError(f"{metadata_uri}: sha256 of the file is not the pinned "
                                     f"{expected_metadata_sha256}; refusing to load")
    metadata = parse_metadata(raw_metadata, source=metadata_uri, limits=limits)
    del raw_metadata
    if metadata.version != version:
        raise ArtifactIntegrityError(f"{metadata_uri} says version {metadata.version}; refusing to load")
    if expected_sha256 is not None and metadata.model.sha256 != expected_sha256:
        raise ArtifactIntegrityError(f"{version_uri}/{metadata.model.file}: sha256 {metadata.model.sha256} (in "
                                     f"metadata.json) is not the pinned {expected_sha256}; refusing to load")
    return metadata


def _onnx_unavailable(metadata: ArtifactMetadata, expected_sha256: str | None,
                      expected_metadata_sha256: str | None) -> str | None:
    """Why model.onnx of this version cannot be served, or None."""
    if metadata.onnx is None:
        return "the version was written before modelloop exported ONNX"
    if metadata.onnx.skipped is not None:
        return metadata.onnx.skipped
    if expected_sha256 is not None and expected_metadata_sha256 is None:
        return ("its digest is pinned through metadata.json, whose digest is not pinned (a deployment status "
                "written before the operator pinned it)")
    return None


def _read_verified(store: ArtifactStore, version: int, version_uri: str, name: str, sha256: str, size: int, *,
                   limits: ArtifactLimits, pinned: str | None = None) -> bytes:
    """A file of the version, after its sha256 and size matched metadata.json (and its sha256 the pin). Never
    more than the recorded size is read. A refusal says which check failed, not what the file holds (its
    digest or size would tell about whatever it is)."""
    if size > limits.model_bytes:
        raise limits.refuse("model_bytes", f"{version_uri}/{name}: metadata.json records a file larger than")
    try:
        data = store.read_file(version, name, max_bytes=size)
    except ArtifactLimitError:
        data = None
    if data is None or len(data) != size or sha256_bytes(data) != sha256:
        raise ArtifactIntegrityError(f"{version_uri}/{name}: sha256 or size does not match metadata.json; "
                                     f"refusing to load")
    if pinned is not None and sha256 != pinned:
        raise ArtifactIntegrityError(f"{version_uri}/{name}: sha256 of the file is not the pinned {pinned}; "
                                     f"refusing to load")
    return data


def _bit_generator_name(node: dict[str, Any]) -> str:
    """The bit generator class name a RandomGeneratorNode holds as data (where skops 0.16 reads it)."""
    try:
        text = node["content"]["bit_generator"]["content"]["bit_generator"]["content"]
        name = json.loads(text) if isinstance(text, str) and len(text) <= 256 else None  # a quoted class name
    except (KeyError, TypeError, ValueError):
        name = None
    if not isinstance(name, str):
        raise UntrustedTypeError("the model file has a random Generator without a readable bit generator name; "
                                 "refusing to load")
    return name
