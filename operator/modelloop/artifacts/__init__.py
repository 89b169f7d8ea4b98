"""Model artifacts: the artifact format (docs/contracts.md), the versioned stores (s3, file, pvc) and
the safe model loader. See docs/artifacts.md."""
from .backends import read_object
from .errors import (
    ArtifactError, ArtifactIntegrityError, ArtifactLimitError, InvalidMetadataError, InvalidUriError,
    ObjectNotFoundError, ObjectTooLargeError, OnnxOnlyError, OnnxUnavailableError, StorageError,
    UntrustedTypeError, VersionExistsError,
)
from .limits import ArtifactLimits
from .metadata import (
    ARTIFACT_FORMAT, METADATA_FILE, MODEL_FILE, MODEL_FILES, NATIVE_FORMATS, ONNX_FILE, ArtifactMetadata,
    decode_metadata, parse_metadata, validate_metadata,
)
from .model import (
    HARMLESS_UFUNCS, RUNTIMES, LoadedModel, check_model_file, deserialize_model, load_model, serialize_model,
    sha256_bytes,
)
from .onnx_model import OnnxPredictor, check_onnx_file
from .stores import ArtifactStore, open_store, split_version_uri, version_under
from .uri import StorageUri, parse_uri

__all__ = [
    "ARTIFACT_FORMAT", "HARMLESS_UFUNCS", "METADATA_FILE", "MODEL_FILE", "MODEL_FILES", "NATIVE_FORMATS",
    "ONNX_FILE", "RUNTIMES",
    "ArtifactError", "ArtifactIntegrityError", "ArtifactLimitError", "ArtifactLimits", "ArtifactMetadata",
    "ArtifactStore", "InvalidMetadataError", "InvalidUriError", "LoadedModel", "ObjectNotFoundError",
    "ObjectTooLargeError", "OnnxOnlyError", "OnnxPredictor", "OnnxUnavailableError", "StorageError",
    "StorageUri", "UntrustedTypeError", "VersionExistsError", "check_model_file", "check_onnx_file",
    "decode_metadata", "deserialize_model", "load_model", "open_store",
    "parse_metadata", "parse_uri", "read_object", "serialize_model", "sha256_bytes", "split_version_uri",
    "validate_metadata", "version_under",
]
