"""The versioned artifact store: `<output>/v<N>/` holding model files and metadata.json.

A version exists once its metadata.json exists. commit_version stages the files under a hidden
`<output>/.staging/` prefix, claims the version (an exclusive create of `.staging/v<N>.claim`), moves
them to `v<N>/`, then creates metadata.json only if it is absent (an exclusive create), so a reader never
sees a half-written version, a committed one never changes, and of two writers racing for one version
only the one holding the claim ever writes into `v<N>/`.
delete_version goes the other way: metadata.json first, then the files, so a reader never takes what
is left of a half-deleted version for a version.
"""
from __future__ import annotations

import hashlib
import json
import re
import uuid
from typing import Any, Mapping

from .backends import Backend, backend_for, read_capped
from .errors import (InvalidMetadataError, InvalidUriError, ObjectNotFoundError, ObjectTooLargeError, StorageError,
                     VersionExistsError)
from .limits import ENVIRONMENT, current_limits
from .metadata import FILE_NAME_PATTERN, METADATA_FILE, decode_metadata, validate_metadata
from .uri import StorageUri, parse_uri

_VERSION_KEY = re.compile(r"^v([1-9][0-9]*)/" + re.escape(METADATA_FILE) + "$")
_VERSION_DIR_KEY = re.compile(r"^v([1-9][0-9]*)/")
_VERSION_URI = re.compile(r"^(?P<base>.*)/v(?P<version>[1-9][0-9]*)/?$")
_FILE_NAME = re.compile(FILE_NAME_PATTERN)


class ArtifactStore:
    """The versions below one output URI (s3://bucket/prefix, file:///abs/path, pvc://claim/path)."""

    def __init__(self, base: StorageUri, backend: Backend):
        self.base = base
        self._backend = backend

    def __repr__(self) -> str:
        return f"ArtifactStore('{self.base}')"

    def version_uri(self, version: int) -> str:
        return str(self._version_dir(version))

    def versions(self) -> list[int]:
        """Committed versions (those with a metadata.json), ascending."""
        found = (_VERSION_KEY.match(key) for key in self._backend.list_keys(self.base))
        return sorted(int(m[1]) for m in found if m)

    def layout(self) -> tuple[list[int], list[int]]:
        """(committed versions, incomplete ones), ascending, from one listing. An incomplete version is a
        `v<N>/` holding files but no metadata.json: a commit in progress or killed, or a deletion interrupted."""
        committed, present = set(), set()
        for key in self._backend.list_keys(self.base):
            if m := _VERSION_KEY.match(key):
                committed.add(int(m[1]))
            elif m := _VERSION_DIR_KEY.match(key):
                present.add(int(m[1]))
        return sorted(committed), sorted(present - committed)

    def delete_version(self, version: int) -> None:
        """Delete a version: metadata.json first, so that from that moment it is not a version (versions()
        skips it, read_metadata says it does not exist, a server cannot load it), then its files. Also
        finishes an interrupted deletion or removes a killed commit's files. StorageError when anything is
        left (the version is gone as a version even then; a later call removes the rest)."""
        target = self._version_dir(version)
        self._backend.delete(target.child(METADATA_FILE))
        self._backend.delete_tree(target)
        left = sorted(self._backend.list_keys(target))
        if left:
            raise StorageError(f"{target}: {len(left)} file(s) could not be deleted ({', '.join(left[:3])})")

    def read_metadata(self, version: int, max_bytes: int | None = None) -> dict[str, Any]:
        """The validated metadata.json of a committed version; ObjectNotFoundError if it is not committed.
        A file bigger than `max_bytes` (default: MODELLOOP_MAX_METADATA_BYTES) is refused while it streams."""
        return decode_metadata(self.read_metadata_bytes(version, max_bytes), source=self._metadata_source(version))

    def read_metadata_bytes(self, version: int, max_bytes: int | None = None) -> bytes:
        """metadata.json of a committed version as stored (what a pinned sha256 is computed over), at most
        `max_bytes` (default: MODELLOOP_MAX_METADATA_BYTES; ObjectTooLargeError beyond, while it streams)."""
        uri = self._version_dir(version).child(METADATA_FILE)
        setting = ENVIRONMENT["metadata_bytes"] if max_bytes is None else None
        try:
            return read_capped(self._backend, uri, current_limits().metadata_bytes if max_bytes is None else max_bytes,
                               METADATA_FILE, setting)
        except ObjectNotFoundError:
            raise ObjectNotFoundError(f"version {version} does not exist in {self.base} (no {uri})") from None

    def read_file(self, version: int, name: str, max_bytes: int | None = None) -> bytes:
        """A file of a version, at most `max_bytes` (default: MODELLOOP_MAX_MODEL_BYTES; ObjectTooLargeError
        beyond, while it streams)."""
        uri = self._version_dir(version).child(_checked_name(name))
        setting = ENVIRONMENT["model_bytes"] if max_bytes is None else None
        return read_capped(self._backend, uri, current_limits().model_bytes if max_bytes is None else max_bytes,
                           "file", setting)

    def file_sha256(self, version: int, name: str, max_bytes: int) -> tuple[str, int]:
        """sha256 (hex) and size of a file of a version, streamed: never more than one chunk in memory;
        a file larger than `max_bytes` is refused (StorageError)."""
        uri = self._version_dir(version).child(_checked_name(name))
        digest, size = hashlib.sha256(), 0
        for chunk in self._backend.chunks(uri):
            size += len(chunk)
            if size > max_bytes:
                raise ObjectTooLargeError(f"{uri}: the file is larger than the limit of {max_bytes} bytes")
            digest.update(chunk)
        return digest.hexdigest(), size

    def commit_version(self, version: int, files: Mapping[str, bytes], metadata: Mapping[str, Any]) -> str:
        """Write a new version: files first (staged, then moved), metadata.json last. Returns its URI.

        Raises VersionExistsError if the version is already committed; leftovers of an earlier failed
        attempt at the same version (files without metadata.json) are replaced.
        """
        target = self._version_dir(version)
        parsed = validate_metadata(dict(metadata), source=f"metadata of {target}")
        if parsed.version != version:
            raise InvalidMetadataError(f"metadata.version {parsed.version} differs from the version {version} "
                                       f"being committed")
        for name in files:
            _checked_name(name)
        if METADATA_FILE in files:
            raise ValueError(f"{METADATA_FILE} is written by commit_version from `metadata`, not passed in files")
        named = {"metadata.model.file": parsed.model.file, "metadata.onnx.file": parsed.onnx and parsed.onnx.file}
        for field, name in named.items():
            if name is not None and name not in files:
                raise InvalidMetadataError(f"{field} '{name}' is not among the files {sorted(files)}")
        if self._backend.exists(target.child(METADATA_FILE)):
            raise VersionExistsError(f"version {version} already exists at {target}; versions are immutable")

        staging = self.base.child(".staging", f"v{version}-{uuid.uuid4().hex[:12]}")
        claim = self.base.child(".staging", f"v{version}.claim")
        claimed = False
        try:
            for name, data in files.items():
                self._backend.write(staging.child(name), data)
            owner = parsed.training.model_dump(include={"namespace", "name", "uid", "run"})
            claimed = self._claim(version, claim, owner)
            if self._backend.exists(target.child(METADATA_FILE)):  # committed before our claim: by its holder
                raise VersionExistsError(f"version {version} already exists at {target}; versions are immutable")
            for name in files:
                self._backend.move(staging.child(name), target.child(name))
            body = json.dumps(metadata, indent=2, sort_keys=False, allow_nan=False).encode() + b"\n"
            try:
                self._backend.write_new(target.child(METADATA_FILE), body)
            except VersionExistsError:
                raise VersionExistsError(f"version {version} already exists at {target}; versions are "
                                         f"immutable") from None
        finally:
            try:
                self._backend.delete_tree(staging)
            except StorageError:
                pass  # a hidden leftover; readers never look under .staging
            if claimed:  # this writer writes nothing more: another may claim the version (and find it committed)
                try:
                    self._backend.delete(claim)
                except StorageError:
                    pass  # left behind: only a retry of the same run takes it over
        return str(target)

    def _claim(self, version: int, claim: StorageUri, owner: dict[str, Any]) -> bool:
        """Become the one writer of `v<version>/` (True), or raise VersionExistsError naming the writer that is.

        Moving files into `v<N>/` and creating metadata.json are two steps on S3; without the claim, a writer
        that loses the metadata.json race could still have replaced the winner's model file. The claim is an
        exclusive create, deleted when its holder is done. One left by a killed attempt is taken over only by
        a retry of the same run (same training uid and run: a Job runs its pods one at a time); any other
        writer is refused while it is there (what a killed writer without a run leaves stays until deleted).
        """
        body = json.dumps(owner, sort_keys=True).encode()
        for _ in range(3):
            try:
                self._backend.write_new(claim, body)
                return True
            except VersionExistsError:
                pass
            try:
                holder = json.loads(read_capped(self._backend, claim, 64 * 1024, "claim"))
            except ObjectNotFoundError:
                continue  # released meanwhile: claim again
            except (ValueError, ObjectTooLargeError):
                holder = {}
            if holder == owner and owner.get("uid") and owner.get("run"):
                return True  # left by an earlier attempt of this run, which is over
            who = (f"run {holder.get('run')} of ModelTraining {holder.get('namespace')}/{holder.get('name')}"
                   if holder.get("run") else "a writer without a training run")
            raise VersionExistsError(f"version {version} is being committed by another writer ({who}) at "
                                     f"{self._version_dir(version)}; versions are immutable (if that writer is "
                                     f"gone, delete {claim} to release the version)")
        raise VersionExistsError(f"version {version} is being claimed by other writers at "
                                 f"{self._version_dir(version)}; versions are immutable")

    def _metadata_source(self, version: int) -> str:
        return str(self._version_dir(version).child(METADATA_FILE))

    def _version_dir(self, version: int) -> StorageUri:
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError(f"version {version!r} is not a positive integer")
        return self.base.child(f"v{version}")


def _checked_name(name: str) -> str:
    if not isinstance(name, str) or not _FILE_NAME.match(name):
        raise ValueError(f"file name {name!r} is not a plain file name (letters, digits, . _ -)")
    return name


def open_store(uri: str, *, field: str = "uri", credentials: Mapping[str, str] | None = None) -> ArtifactStore:
    """The store of an output URI; InvalidUriError names `field` and the bad value. `credentials`
    (AWS_* keys) replace the environment's, for callers serving many resources (the operator)."""
    base = parse_uri(uri, field=field)
    return ArtifactStore(base, backend_for(base, credentials))


def version_under(output_uri: str, uri: str | None) -> int | None:
    """N when `uri` is `<output_uri>/v<N>` (both normalised: scheme case, slashes, file paths), else None."""
    if not uri:
        return None
    match = _VERSION_URI.match(uri.strip())
    if not match:
        return None
    try:
        same = parse_uri(match["base"]) == parse_uri(output_uri)
    except InvalidUriError:
        return None
    return int(match["version"]) if same else None


def split_version_uri(version_uri: str, *, credentials: Mapping[str, str] | None = None
                      ) -> tuple[ArtifactStore, int]:
    """`<output>/v<N>` -> (store of <output>, N)."""
    parse_uri(version_uri)
    match = _VERSION_URI.match(version_uri)
    if not match:
        raise InvalidUriError(f"uri '{version_uri}' is not a version URI; expected <output>/v<N>, "
                              f"e.g. s3://bucket/models/v3")
    return open_store(match["base"], credentials=credentials), int(match["version"])
