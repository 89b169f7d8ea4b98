"""The controllers' access to artifact and dataset stores, on behalf of a resource and with its credentials.

Everything the operator reads for a resource goes through here, under three rules (docs/security.md):
- Only the credentials of the resource's own Secret (spec.storage.secretRef) are used; without one, S3
  is read anonymously. The operator's own environment (keys, instance profile, service-account role)
  never reaches a store on a resource's behalf.
- file:// and pvc:// URIs would be paths on the operator's own filesystem: refused unless the operator
  runs with local storage enabled (MODELLOOP_OPERATOR_LOCAL_STORAGE, development only).
- Reads are capped (model, metadata.json, datasets) and model files are hashed as they stream.

A ModelDeployment without its own spec.storage reads with its training's (deployment_storage), for its servers
and for the DriftMonitors that watch it alike. Credentials are handed to the store objects only; they are never logged, put in events or in status.
Verified metadata is cached per namespace, URI and credentials, in a cache bounded in entries and bytes that
keeps a VersionSummary (the digests and the fields the controllers use), never the document; a version deleted
by retention is forgotten there, for every namespace and credentials.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import threading
import time
from types import MappingProxyType
from typing import Any, Mapping

from .. import kube
from ..api.common import CREDENTIAL_KEYS, REQUIRED_CREDENTIAL_KEYS, StorageSpec
from ..api.deployment import ModelDeploymentSpec
from ..api.training import ModelTrainingSpec
from ..artifacts import (METADATA_FILE, ArtifactIntegrityError, ArtifactLimitError, ArtifactStore, ObjectNotFoundError,
                         StorageError, open_store, parse_metadata, parse_uri, read_object, sha256_bytes,
                         version_under)
from ..artifacts.backends import backend_for
from ..artifacts.limits import current_limits, load_json
from ..artifacts.metadata import VersionSummary
from ..cache import BoundedCache
from ..config import SETTINGS, Settings
from ..names import API_VERSION, TRAINING
from ..report import decode_history

Credentials = Mapping[str, str]
log = logging.getLogger("modelloop.storage")
ANONYMOUS: Credentials = MappingProxyType({})
LOCAL_SCHEMES = ("file", "pvc")


class StorageAccessError(RuntimeError):
    """The store cannot be used for this resource (a missing Secret or key, a refused scheme)."""


def store_unavailable(error: BaseException) -> bool:
    """The store did not serve the request (unreachable, timed out, refused access, an S3 error): the same
    read can succeed later, unlike an object that is missing or does not match its metadata."""
    return isinstance(error, StorageError) and not isinstance(error, (ObjectNotFoundError, ArtifactLimitError))


def credentials_from_secret(namespace: str, storage: StorageSpec | None) -> Credentials:
    """The AWS_* keys of the resource's Secret; ANONYMOUS (an empty mapping) without a secretRef."""
    if not storage or not storage.secret_ref:
        return ANONYMOUS
    name = storage.secret_ref.name
    secret = _secret(namespace, name)
    if secret is None:
        raise StorageAccessError(f"spec.storage.secretRef: Secret '{name}' not found in namespace {namespace}")
    data = secret.get("data") or {}
    missing = [k for k in REQUIRED_CREDENTIAL_KEYS if k not in data]
    if missing:
        raise StorageAccessError(f"spec.storage.secretRef: Secret '{name}' lacks the key(s) {', '.join(missing)}")
    return MappingProxyType({k: base64.b64decode(v).decode() for k, v in data.items() if k in CREDENTIAL_KEYS})


# (namespace, name) -> (monotonic time read, the Secret or None). Every reconcile needs its resource's
# credentials; reading the Secret once per SECRET_TTL_SECONDS instead of each time saves one request in three
# of a ModelDeployment's. A rotated or created Secret is used at most that much later; a watch would need
# list and watch on every Secret of the cluster, which the operator does not get (least privilege): so no kopf index.
SECRET_TTL_SECONDS = 10.0
_secrets: BoundedCache[tuple[str, str], tuple[float, dict | None]] = BoundedCache(SETTINGS.cache_entries)


def _secret(namespace: str, name: str) -> dict | None:
    cached = _secrets.get((namespace, name))
    if cached is not None and time.monotonic() - cached[0] < SECRET_TTL_SECONDS:
        return cached[1]
    secret = kube.get("v1", "Secret", namespace, name)
    _secrets.put((namespace, name), (time.monotonic(), secret))
    return secret


def deployment_storage(namespace: str, spec: ModelDeploymentSpec, training: dict | None = None) -> StorageSpec | None:
    """The storage a ModelDeployment reads its artifacts with: its own spec.storage, or else that of the
    ModelTraining it follows (the servers read the store the training wrote). `training`: that ModelTraining
    when the caller has read it already."""
    if spec.storage is not None or not spec.model.from_training:
        return spec.storage
    if training is None:
        training = kube.get(API_VERSION, TRAINING.kind, namespace, spec.model.from_training)
    return ModelTrainingSpec.model_validate(training["spec"]).storage if training else None


def check_allowed(uri: str, field: str, settings: Settings | None = None) -> None:
    """Refuse URIs the operator must not read for a resource (local paths, unless enabled)."""
    scheme = parse_uri(uri, field=field).scheme
    if scheme in LOCAL_SCHEMES and not (settings or SETTINGS).local_storage:
        raise StorageAccessError(
            f"{field} '{uri}': the operator does not read {scheme}:// storage on behalf of resources (it would "
            f"read its own filesystem); use s3://, or enable local storage for development (chart value "
            f"operator.localStorage)")


def stored_versions(output_uri: str, credentials: Credentials, field: str = "spec.output.uri") -> list[int]:
    check_allowed(output_uri, field)
    return open_store(output_uri, field=field, credentials=credentials).versions()


def store_layout(output_uri: str, credentials: Credentials, field: str = "spec.output.uri") -> tuple[list[int], list[int]]:
    """(committed versions, incomplete ones) of an output store, from one listing."""
    check_allowed(output_uri, field)
    return open_store(output_uri, field=field, credentials=credentials).layout()


def delete_version(output_uri: str, version: int, credentials: Credentials, field: str = "spec.output.uri") -> None:
    """Delete a version from its store (metadata.json first: see ArtifactStore.delete_version) and forget it
    in the verified-metadata cache, before (a reader finds nothing cached) and after (nothing verified
    meanwhile survives)."""
    check_allowed(output_uri, field)
    store = open_store(output_uri, field=field, credentials=credentials)
    forget(output_uri, version)
    try:
        store.delete_version(version)
    finally:
        forget(output_uri, version)


def forget(output_uri: str, version: int) -> int:
    """Drop a version from the verified-metadata cache, whatever namespace or credentials verified it."""
    return _verified.discard(lambda key: version_under(output_uri, key[1]) == version)


def _fingerprint(credentials: Credentials) -> str:
    return hashlib.sha256(json.dumps(sorted(credentials.items())).encode()).hexdigest()


# Parsing a metadata.json within its bounds holds up to ~60 MB for a moment (limits.py): a few at a time, whatever
# the number of workers, so that many hostile versions verified at once stay within the operator's memory.
_parsing = threading.BoundedSemaphore(SETTINGS.verify_concurrency)
# Kept here: store contents (verified metadata.json), which no Kubernetes watch or kopf index carries.
_verified: BoundedCache[tuple[str, str, str], VersionSummary] = BoundedCache(
    SETTINGS.cache_entries, max_bytes=SETTINGS.verified_cache_bytes, size=lambda summary: summary.nbytes)


def verified_metadata(namespace: str, output_uri: str, version: int, credentials: Credentials,
                      field: str = "spec.output.uri") -> dict[str, Any]:
    """metadata.json of a version, checked (schema, version number, size and sha256 of model.skops and of
    model.onnx when there is one): uri,
    metric(s), the model's sha256, the sha256 of metadata.json's bytes (the two digests the servers are
    pinned to) and the metadata the controllers use (VersionSummary.document). Versions are immutable, so a
    verified one is remembered, per namespace and credentials: a resource never sees what another's
    credentials could read."""
    check_allowed(output_uri, field)
    key = (namespace, f"{output_uri.rstrip('/')}/v{version}", _fingerprint(credentials))
    summary = _verified.get(key)
    if summary is None:
        summary = _verify(open_store(output_uri, field=field, credentials=credentials), version)
        _verified.put(key, summary)
    metric = {**summary.metric, "display": f"{summary.metric['value']:.4g}"}  # for reading (printer columns)
    return {"uri": summary.uri, "metrics": dict(summary.metrics), "metric": metric, "sha256": summary.sha256,
            "metadataSha256": summary.metadata_sha256, "metadata": summary.document()}


def _verify(store: ArtifactStore, version: int) -> VersionSummary:
    # The digest is taken over the very bytes that are parsed and checked here, within the bounds of
    # modelloop.artifacts.limits (bytes, JSON values, nesting) and the strict schema.
    source = f"{store.version_uri(version)}/{METADATA_FILE}"
    raw = store.read_metadata_bytes(version, max_bytes=SETTINGS.max_metadata_bytes)
    with _parsing:
        meta = parse_metadata(raw, source=source,
                              limits=dataclasses.replace(current_limits(), metadata_bytes=SETTINGS.max_metadata_bytes))
        summary = VersionSummary.of(meta, uri=store.version_uri(version), metadata_sha256=sha256_bytes(raw))
        files = [(f.file, f.sha256, f.size) for f in (meta.model, meta.onnx) if f is not None and f.file]
    del raw, meta  # the summary is all that is kept
    if summary.version != version:
        raise ArtifactIntegrityError(f"{source} says version {summary.version}")
    for name, sha256, size in files:  # model.skops, and model.onnx when the version has one
        if store.file_sha256(version, name, max_bytes=SETTINGS.max_model_bytes) != (sha256, size):
            raise ArtifactIntegrityError(f"{store.version_uri(version)}/{name}: sha256 or size does not "
                                         f"match metadata.json; the artifact was modified after it was written")
    return summary


def read_dataset(uri: str, credentials: Credentials, field: str) -> bytes:
    """A dataset's bytes, at most SETTINGS.max_dataset_bytes."""
    check_allowed(uri, field)
    return read_object(uri, field=field, credentials=credentials, max_bytes=SETTINGS.max_dataset_bytes)


# A DriftMonitor's report history is drawn from at most modelloop.report.MAX_POINTS points of ~300 bytes.
MAX_REPORT_HISTORY_BYTES = 4 * 1024 * 1024


def read_report_history(uri: str, credentials: Credentials) -> list[dict]:
    """The points of a monitor's stored report history; [] when there is none yet, when it is not one, or when it
    goes past a bound (MAX_REPORT_HISTORY_BYTES, then the JSON values and nesting metadata.json is held to,
    counted before it is parsed): the report then starts a fresh history, which replaces it."""
    check_allowed(uri, "status.report.uri")
    try:
        raw = read_object(uri, field="status.report.uri", credentials=credentials, max_bytes=MAX_REPORT_HISTORY_BYTES)
        return decode_history(load_json(raw, current_limits(), "metadata_nodes", uri))
    except ObjectNotFoundError:
        return []
    except ArtifactLimitError as exc:  # too large, too many values or too deep: written by something else
        log.warning("report_history_refused=%s", exc)
        return []
    except ValueError:  # not JSON: written by something else, started afresh
        return []


def write_report(location: str, files: Mapping[str, bytes], credentials: Credentials) -> None:
    """Write a monitor's report files (name -> bytes) under `location`, each replacing the last."""
    check_allowed(location, "status.report.uri")
    base = parse_uri(location, field="status.report.uri")
    backend = backend_for(base, credentials)
    for name, data in files.items():
        backend.write(base.child(name), data)
