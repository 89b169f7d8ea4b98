"""Model artifacts: the artifact format (docs/contracts.md), the versioned stores (s3, file, pvc) and
the safe model loader. See docs/artifacts.md."""
from .backends import read_object
from .errors import (
    ArtifactError, ArtifactIntegrityError, InvalidMetadataError, InvalidUriError, ObjectNotFoundError,
    StorageError, UntrustedTypeError, VersionExistsError,
)
from .metadata import (
    ARTIFACT_FORMAT, METADATA_FILE, MODEL_FILE, ArtifactMetadata, decode_metadata, parse_metadata, validate_metadata,
)
from .model import (
    HARMLESS_UFUNCS, LoadedModel, check_model_file, deserialize_model, load_model, serialize_model, sha256_bytes,
)
from .stores import ArtifactStore, open_store, split_version_uri
from .uri import StorageUri, parse_uri

__all__ = [
    "ARTIFACT_FORMAT", "HARMLESS_UFUNCS", "METADATA_FILE", "MODEL_FILE",
    "ArtifactError", "ArtifactIntegrityError", "ArtifactMetadata", "ArtifactStore", "InvalidMetadataError",
    "InvalidUriError", "LoadedModel", "ObjectNotFoundError", "StorageError", "StorageUri", "UntrustedTypeError",
    "VersionExistsError", "check_model_file", "decode_metadata", "deserialize_model", "load_model", "open_store",
    "parse_metadata", "parse_uri", "read_object", "serialize_model", "sha256_bytes", "split_version_uri",
    "validate_metadata",
]
