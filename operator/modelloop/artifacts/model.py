"""Model files: serialise with skops, load only after the checksum and the type policy pass.

A pickle runs arbitrary code when loaded; skops instead rebuilds objects from a description and
refuses any type it is not told to trust. What we tell it to trust is the intersection of the
version's `trustedTypes` (recorded by the trainer) and an allow-list of libraries, so a forged
metadata.json cannot widen the set beyond scikit-learn, numpy, scipy and builtins.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Mapping

from .errors import ArtifactIntegrityError, UntrustedTypeError
from .metadata import ArtifactMetadata
from .stores import split_version_uri

# A type is allowed when its dotted path starts with one of these.
ALLOWED_TYPE_PREFIXES = ("sklearn.", "numpy.", "scipy.", "builtins.")
# Builtins that evaluate code, import modules or touch files: never trusted, even when listed.
DENIED_TYPES = frozenset(f"builtins.{name}" for name in (
    "eval", "exec", "compile", "open", "__import__", "getattr", "setattr", "delattr", "globals", "locals",
    "vars", "input", "breakpoint", "exit", "quit", "help", "memoryview", "__loader__", "__build_class__",
))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_allowed_type(type_name: str) -> bool:
    return type_name.startswith(ALLOWED_TYPE_PREFIXES) and type_name not in DENIED_TYPES and ".." not in type_name


def serialize_model(model: Any) -> tuple[bytes, list[str]]:
    """skops bytes of a fitted model and the types a loader must trust to read them back.

    Refuses (UntrustedTypeError) a model that needs a type outside the allow-list: it could not be
    loaded by a server anyway.
    """
    import skops.io

    data = skops.io.dumps(model)
    needed = sorted(skops.io.get_untrusted_types(data=data))
    refused = [t for t in needed if not is_allowed_type(t)]
    if refused:
        raise UntrustedTypeError(f"the model needs types outside the allow-list ({', '.join(ALLOWED_TYPE_PREFIXES)}"
                                 f"*): {', '.join(refused)}")
    return data, needed


def deserialize_model(data: bytes, trusted_types: list[str]) -> Any:
    """Load skops bytes, trusting only `trusted_types`, each of which must be inside the allow-list."""
    import skops.io

    refused = [t for t in trusted_types if not is_allowed_type(t)]
    if refused:
        raise UntrustedTypeError(f"trustedTypes lists types outside the allow-list "
                                 f"({', '.join(ALLOWED_TYPE_PREFIXES)}*): {', '.join(refused)}")
    try:
        unexpected = sorted(set(skops.io.get_untrusted_types(data=data)) - set(trusted_types))
    except Exception as exc:  # not a skops file at all (a checksum on garbage can still match)
        raise ArtifactIntegrityError(f"the model file is not a readable skops file: {exc}") from None
    if unexpected:
        raise UntrustedTypeError(f"the model file contains types that are not trusted: {', '.join(unexpected)}")
    return skops.io.loads(data, trusted=list(trusted_types))


@dataclass(frozen=True)
class LoadedModel:
    model: Any
    metadata: ArtifactMetadata
    uri: str


def load_model(version_uri: str, *, expected_sha256: str | None = None,
               credentials: Mapping[str, str] | None = None) -> LoadedModel:
    """Load the model of `<output>/v<N>`: read metadata.json, verify the model file's size and sha256
    (and `expected_sha256`, e.g. the one pinned in the pod template) BEFORE deserialising it.
    `credentials` (AWS_* keys) replace the environment's, as for open_store."""
    store, version = split_version_uri(version_uri, credentials=credentials)
    metadata = ArtifactMetadata.model_validate(store.read_metadata(version))
    data = store.read_file(version, metadata.model.file)
    actual = sha256_bytes(data)
    if actual != metadata.model.sha256 or len(data) != metadata.model.size:
        raise ArtifactIntegrityError(
            f"{version_uri}/{metadata.model.file}: sha256 {actual} ({len(data)} bytes) does not match "
            f"metadata.json ({metadata.model.sha256}, {metadata.model.size} bytes); refusing to load")
    if expected_sha256 is not None and actual != expected_sha256:
        raise ArtifactIntegrityError(f"{version_uri}/{metadata.model.file}: sha256 {actual} is not the expected "
                                     f"{expected_sha256}; refusing to load")
    return LoadedModel(model=deserialize_model(data, metadata.model.trusted_types), metadata=metadata,
                       uri=store.version_uri(version))
