"""The controllers' access to artifact stores, with the credentials of the resource's Secret.

Credentials are read from the Secret named in spec.storage.secretRef and handed to the store
object only; they are never logged, put in events or in status.
"""
from __future__ import annotations

import base64
from typing import Any, Mapping

from .. import kube
from ..api.common import StorageSpec
from ..artifacts import METADATA_FILE, ArtifactIntegrityError, decode_metadata, open_store, sha256_bytes

CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
                   "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")


class StorageAccessError(RuntimeError):
    pass


def credentials_from_secret(namespace: str, storage: StorageSpec | None) -> Mapping[str, str] | None:
    if not storage or not storage.secret_ref:
        return None
    secret = kube.get("v1", "Secret", namespace, storage.secret_ref.name)
    if secret is None:
        raise StorageAccessError(f"spec.storage.secretRef: Secret '{storage.secret_ref.name}' not found in "
                                 f"namespace {namespace}")
    data = secret.get("data") or {}
    return {k: base64.b64decode(v).decode() for k, v in data.items() if k in CREDENTIAL_KEYS}


def stored_versions(output_uri: str, credentials: Mapping[str, str] | None) -> list[int]:
    return open_store(output_uri, credentials=credentials).versions()


def verified_metadata(output_uri: str, version: int, credentials: Mapping[str, str] | None) -> dict[str, Any]:
    """metadata.json of a version, checked (schema, version number, model sha256): uri, metric(s), the
    model's sha256 and the sha256 of metadata.json's bytes (the two digests the servers are pinned to)."""
    store = open_store(output_uri, credentials=credentials)
    raw = store.read_metadata_bytes(version)
    source = f"{store.version_uri(version)}/{METADATA_FILE}"
    meta = decode_metadata(raw, source=source)  # schema-validated
    if meta["version"] != version:
        raise ArtifactIntegrityError(f"{store.version_uri(version)}/metadata.json says version {meta['version']}")
    data = store.read_file(version, meta["model"]["file"])
    if sha256_bytes(data) != meta["model"]["sha256"]:
        raise ArtifactIntegrityError(f"{store.version_uri(version)}/{meta['model']['file']}: sha256 does not match "
                                     f"metadata.json; the artifact was modified after it was written")
    return {"uri": store.version_uri(version), "metrics": meta["metrics"], "metric": meta["metric"],
            "sha256": meta["model"]["sha256"], "metadataSha256": sha256_bytes(raw), "metadata": meta}
