"""Errors of the artifact stores and the model loader. Messages name the URI or field at fault."""
from __future__ import annotations


class ArtifactError(Exception):
    """Base of every error raised by modelloop.artifacts."""


class InvalidUriError(ArtifactError, ValueError):
    """A storage URI that cannot be parsed or has a scheme other than s3, file, pvc."""


class StorageError(ArtifactError):
    """The store could not be read or written (missing object, access denied, unreachable endpoint)."""


class ObjectNotFoundError(StorageError):
    """The object, file or committed version does not exist."""


class VersionExistsError(ArtifactError):
    """The version is already committed; versions are immutable."""


class InvalidMetadataError(ArtifactError):
    """metadata.json does not follow the artifact format."""


class ArtifactIntegrityError(ArtifactError):
    """The model file does not match the sha256 or size recorded in metadata.json."""


class ArtifactLimitError(ArtifactIntegrityError):
    """The artifact goes past a bound on what is read or parsed (limits.py); the message names the bound and
    its setting, never the content."""


class ObjectTooLargeError(StorageError, ArtifactLimitError):
    """An object larger than the bound it is read under, refused while it streams: the store answered, and
    will answer the same again."""


class UntrustedTypeError(ArtifactError):
    """The model file contains a type outside the trusted set, or the trusted set leaves the allow-list."""


class OnnxUnavailableError(ArtifactError):
    """The ONNX runtime was required, but the version has no model.onnx that can be served."""


class OnnxOnlyError(ArtifactError):
    """The version's model file is not a scikit-learn model (XGBoost, LightGBM): only model.onnx serves it,
    and the runtime asked for is sklearn."""
