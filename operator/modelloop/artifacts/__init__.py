"""Model artifacts: the artifact format (docs/contracts.md), the versioned stores (s3, file, pvc) and
the safe model loader. See docs/artifacts.md."""
from .backends import read_object
from .errors import (
    ArtifactError, ArtifactIntegrityError, InvalidMetadataError, InvalidUriError, ObjectNotFoundError,
    StorageError, UntrustedTypeError, VersionExistsError,
)
from .metadata import ARTIFACT_FORMAT, METADATA_FILE, MODEL_FILE, ArtifactMetadata, validate_metadata
from .model import (
    ALLOWED_TYPE_PREFIXES, DENIED_TYPES, LoadedModel, deserialize_model, is_allowed_type, load_model, serialize_model,
    sha256_bytes,
)
from .stores import ArtifactStore, open_store, split_version_uri
from .uri import StorageUri, parse_uri

__all__ = [
    "ALLOWED_TYPE_PREFIXES", "ARTIFACT_FORMAT", "DENIED_TYPES", "METADATA_FILE", "MODEL_FILE",
    "ArtifactError", "ArtifactIntegrityError", "ArtifactMetadata", "ArtifactStore", "InvalidMetadataError",
    "InvalidUriError", "LoadedModel", "ObjectNotFoundError", "StorageError", "StorageUri", "UntrustedTypeError",
    "VersionExistsError", "deserialize_model", "is_allowed_type", "load_model", "open_store", "parse_uri",
    "read_object", "serialize_model", "sha256_bytes", "split_version_uri", "validate_metadata",
]
