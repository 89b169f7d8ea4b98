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
"""
from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from .errors import ArtifactIntegrityError, OnnxUnavailableError, UntrustedTypeError
from .estimator_state import prepare_loaded_model
from .metadata import METADATA_FILE, ArtifactMetadata, parse_metadata
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
# schema.json of a large forest is a few MB; anything far beyond is not a model the trainer wrote.
MAX_SCHEMA_BYTES = 256 * 1024 * 1024


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class SkopsNode:
    """One node of a skops file: its loader (how skops rebuilds it) and the name skops imports for it."""

    loader: str
    name: str


def read_skops_schema(data: bytes) -> dict[str, Any]:
    """schema.json of the skops file `data` (a zip), parsed as plain JSON: nothing is imported."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            info = archive.getinfo("schema.json")
            if info.file_size > MAX_SCHEMA_BYTES:
                raise ArtifactIntegrityError(f"the model file's schema.json has {info.file_size} bytes (more than "
                                             f"{MAX_SCHEMA_BYTES}); refusing to load")
            schema = json.loads(archive.read(info))
    except ArtifactIntegrityError:
        raise
    except (zipfile.BadZipFile, KeyError, ValueError, RecursionError, OSError) as exc:
        # a checksum on garbage can still match; say what is wrong without echoing the content
        raise ArtifactIntegrityError(f"the model file is not a readable skops file ({type(exc).__name__})") from None
    if not isinstance(schema, dict):
        raise ArtifactIntegrityError("the model file's schema.json is not a JSON object")
    return schema


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
                raise UntrustedTypeError(f"the model file has a malformed node (loader {loader!r}, module "
                                         f"{module!r}, class {cls!r}); refusing to load")
            yield SkopsNode(loader, f"{module}.{cls}")
            if loader == "RandomGeneratorNode":
                yield SkopsNode("BitGenerator", f"numpy.random.{_bit_generator_name(value)}")
        stack.extend(value.values())


def check_model_file(data: bytes) -> list[str]:
    """Refuse (UntrustedTypeError) a skops file naming anything outside the exact lists; return the names
    it uses, sorted (what `skops.io.loads` is then told to trust)."""
    refused, names = _screen(data)
    if refused:
        raise UntrustedTypeError(
            f"the model file names types outside modelloop's exact allow-list: {', '.join(refused)}; "
            f"modelloop's trainer never writes these, so the file was not written by it or was altered; "
            f"refusing to load")
    return names


def _screen(data: bytes) -> tuple[list[str], list[str]]:
    """(what is refused, with its node kind; every name used), each sorted."""
    schema = read_skops_schema(data)
    refused: set[str] = set()
    names: set[str] = set()
    protocol = schema.get("protocol")
    if type(protocol) is not int or protocol not in SKOPS_PROTOCOLS:
        # older protocols rebuild some nodes with fewer checks; the trainer writes the current one
        refused.add(f"skops protocol {protocol!r} (trusted: {', '.join(map(str, sorted(SKOPS_PROTOCOLS)))})")
    for node in skops_nodes(schema):
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
            f"the model holds types outside modelloop's allow-list: {', '.join(refused)}; the list holds what "
            f"the allowed estimators produce (python -m modelloop.training.trusted_types); choose other "
            f"params or another estimator")
    return data, sorted(skops.io.get_untrusted_types(data=data))


def deserialize_model(data: bytes) -> Any:
    """Load skops bytes after `check_model_file` passed; skops trusts exactly the names checked."""
    import skops.io

    trusted = check_model_file(data)
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
               credentials: Mapping[str, str] | None = None, runtime: str = "sklearn") -> LoadedModel:
    """Load the model of `<output>/v<N>`, checking before anything is parsed:

    1. metadata.json's sha256 against `expected_metadata_sha256` (pinned by the operator), before parsing it;
    2. the file to load, its size and sha256 against metadata.json, and model.skops against `expected_sha256`
       (pinned; metadata.json must record that digest too);
    3. model.skops: every type it names against the exact lists (check_model_file), before skops reads it;
       model.onnx: no external data, only standard operators (check_onnx_file), before onnxruntime reads it.

    `runtime`: "sklearn" loads model.skops; "onnx" loads model.onnx, or raises OnnxUnavailableError when the
    version has none; "auto" loads model.onnx when the version has one, model.skops otherwise. model.onnx is
    pinned through metadata.json: with a pinned model digest but no pinned metadata digest, "auto" loads
    model.skops and "onnx" refuses. `credentials` (AWS_* keys) replace the environment's, as for open_store.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")
    store, version = split_version_uri(version_uri, credentials=credentials)
    raw_metadata = store.read_metadata_bytes(version)
    metadata_uri = f"{store.version_uri(version)}/{METADATA_FILE}"
    if expected_metadata_sha256 is not None and sha256_bytes(raw_metadata) != expected_metadata_sha256:
        raise ArtifactIntegrityError(f"{metadata_uri}: sha256 {sha256_bytes(raw_metadata)} is not the pinned "
                                     f"{expected_metadata_sha256}; refusing to load")
    metadata = parse_metadata(raw_metadata, source=metadata_uri)
    if metadata.version != version:
        raise ArtifactIntegrityError(f"{metadata_uri} says version {metadata.version}; refusing to load")
    if expected_sha256 is not None and metadata.model.sha256 != expected_sha256:
        raise ArtifactIntegrityError(f"{version_uri}/{metadata.model.file}: sha256 {metadata.model.sha256} (in "
                                     f"metadata.json) is not the pinned {expected_sha256}; refusing to load")
    uri = store.version_uri(version)
    if runtime != "sklearn":
        onnx, unavailable = metadata.onnx, _onnx_unavailable(metadata, expected_sha256, expected_metadata_sha256)
        if unavailable is None and onnx is not None and onnx.file and onnx.sha256 and onnx.size is not None:
            data = _read_verified(store, version, version_uri, onnx.file, onnx.sha256, onnx.size)
            return LoadedModel(model=None, metadata=metadata, uri=uri,
                               onnx=OnnxPredictor(data, onnx, metadata.schema_.features))
        if runtime == "onnx":
            raise OnnxUnavailableError(f"{version_uri} has no model.onnx to serve: {unavailable}")
    data = _read_verified(store, version, version_uri, metadata.model.file, metadata.model.sha256,
                          metadata.model.size, pinned=expected_sha256)
    return LoadedModel(model=deserialize_model(data), metadata=metadata, uri=uri)


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
                   pinned: str | None = None) -> bytes:
    """A file of the version, after its sha256 and size matched metadata.json (and its sha256 the pin)."""
    data = store.read_file(version, name)
    actual = sha256_bytes(data)
    if actual != sha256 or len(data) != size:
        raise ArtifactIntegrityError(
            f"{version_uri}/{name}: sha256 {actual} ({len(data)} bytes) does not match "
            f"metadata.json ({sha256}, {size} bytes); refusing to load")
    if pinned is not None and actual != pinned:
        raise ArtifactIntegrityError(f"{version_uri}/{name}: sha256 {actual} is not the pinned "
                                     f"{pinned}; refusing to load")
    return data


def _bit_generator_name(node: dict[str, Any]) -> str:
    """The bit generator class name a RandomGeneratorNode holds as data (where skops 0.16 reads it)."""
    try:
        name = json.loads(node["content"]["bit_generator"]["content"]["bit_generator"]["content"])
    except (KeyError, TypeError, ValueError):
        name = None
    if not isinstance(name, str):
        raise UntrustedTypeError("the model file has a random Generator without a readable bit generator name; "
                                 "refusing to load")
    return name
