"""Object I/O on the two kinds of storage: a local filesystem (file://, pvc://) and S3 (s3://).

A backend reads and writes whole objects named by StorageUri (or streams them in chunks, with a size
cap); the version layout and commit order live in stores.py. On a filesystem, what is read is a regular
file, opened without following a symbolic link and without blocking: never a FIFO (which would hang the
reader), a device (/dev/zero never ends) or a link (to a file outside the store). A backend with a root
(a store's base folder) follows no link in any part of the path below that root either.

S3 credentials, endpoint and region come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_ENDPOINT_URL, AWS_REGION) or from an explicit mapping with the same keys, which then replaces the
environment entirely (an empty mapping means anonymous access); they are never logged.
"""
from __future__ import annotations

import errno
import os
import shutil
import stat
import threading
import uuid
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Mapping, Protocol

from .errors import ObjectNotFoundError, ObjectTooLargeError, StorageError, VersionExistsError
from .uri import StorageUri, parse_uri


CHUNK_BYTES = 1 << 20


class Backend(Protocol):
    def read(self, uri: StorageUri) -> bytes: ...
    def chunks(self, uri: StorageUri) -> Iterator[bytes]:
        """The object's bytes in pieces, so that a caller can hash or cap it without holding it."""
    def exists(self, uri: StorageUri) -> bool: ...
    def write(self, uri: StorageUri, data: bytes) -> None: ...
    def write_new(self, uri: StorageUri, data: bytes) -> None:
        """Write only if nothing is there yet (atomically); VersionExistsError otherwise."""
    def move(self, src: StorageUri, dst: StorageUri) -> None: ...
    def list_keys(self, prefix: StorageUri) -> Iterator[str]:
        """Paths of the objects below `prefix`, relative to it, skipping hidden (staging) folders."""
    def delete(self, uri: StorageUri) -> None:
        """Delete one object, durably; nothing there is no error. StorageError when it cannot be deleted."""
    def delete_tree(self, prefix: StorageUri) -> None: ...


_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
_DIRECTORY_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0)
REGULAR_FILES_RULE = "a store holds regular files only: no symbolic links, FIFOs, devices or sockets"


class FileBackend:
    """file:// and pvc:// URIs: files written then renamed into place, fsynced; read as regular files only.
    With a `root`, no part of a read path below it may be a symbolic link (the root itself may be one)."""

    def __init__(self, root: Path | None = None):
        self.root = root

    def read(self, uri: StorageUri) -> bytes:
        return b"".join(self.chunks(uri))

    def chunks(self, uri: StorageUri) -> Iterator[bytes]:
        path = uri.local_path()
        with _read_errors(uri, path):
            fd = self._open_regular(uri, path)
        with os.fdopen(fd, "rb") as f, _read_errors(uri, path):
            while chunk := f.read(CHUNK_BYTES):
                yield chunk

    def _open_regular(self, uri: StorageUri, path: Path) -> int:
        """A descriptor of the regular file at `path`, opened without following a link (below the root: in any
        part of the path) or blocking; StorageError naming the rule for anything else."""
        parts = _below(self.root, path)
        if parts is None:
            fd = os.open(path, _READ_FLAGS)
        else:
            folder = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
            try:
                for part in parts[:-1]:
                    try:
                        inner = os.open(part, _DIRECTORY_FLAGS, dir_fd=folder)
                    except NotADirectoryError:  # what O_NOFOLLOW | O_DIRECTORY says of a link, too
                        if stat.S_ISLNK(os.lstat(part, dir_fd=folder).st_mode):
                            raise OSError(errno.ELOOP, "a symbolic link") from None
                        raise
                    os.close(folder)
                    folder = inner
                fd = os.open(parts[-1], _READ_FLAGS, dir_fd=folder)
            finally:
                os.close(folder)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise StorageError(f"{uri}: not a regular file; {REGULAR_FILES_RULE}")
        return fd

    def exists(self, uri: StorageUri) -> bool:
        try:
            return stat.S_ISREG(os.lstat(uri.local_path()).st_mode)
        except OSError:
            return False

    def write(self, uri: StorageUri, data: bytes) -> None:
        path = uri.local_path()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise StorageError(f"{uri}: cannot write {path}: {exc.strerror or exc}") from None

    def write_new(self, uri: StorageUri, data: bytes) -> None:
        path = uri.local_path()
        tmp = uri.local_path().with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        self.write(StorageUri("file", "", str(tmp)), data)
        try:
            os.link(tmp, path)  # atomic, and fails if the name exists: no two writers both commit
        except FileExistsError:
            raise VersionExistsError(f"{uri} already exists") from None
        except OSError as exc:
            raise StorageError(f"{uri}: cannot create {path}: {exc.strerror or exc}") from None
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(path.parent)

    def move(self, src: StorageUri, dst: StorageUri) -> None:
        source, target = src.local_path(), dst.local_path()
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)
        except OSError as exc:
            raise StorageError(f"{dst}: cannot move {source} to {target}: {exc.strerror or exc}") from None
        _fsync_dir(target.parent)

    def list_keys(self, prefix: StorageUri) -> Iterator[str]:
        root = prefix.local_path()
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            rel = os.path.relpath(folder, root)
            for name in files:
                yield name if rel == "." else f"{rel}/{name}"

    def delete(self, uri: StorageUri) -> None:
        path = uri.local_path()
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"{uri}: cannot delete {path}: {exc.strerror or exc}") from None
        _fsync_dir(path.parent)

    def delete_tree(self, prefix: StorageUri) -> None:
        shutil.rmtree(prefix.local_path(), ignore_errors=True)


def _below(root: Path | None, path: Path) -> list[str] | None:
    """The parts of `path` below `root`, or None when there is no root or `path` is not below it."""
    if root is None:
        return None
    try:
        parts = list(path.relative_to(root).parts)
    except ValueError:
        return None
    return parts if parts and ".." not in parts else None


@contextmanager
def _read_errors(uri: StorageUri, path: os.PathLike[str]) -> Iterator[None]:
    try:
        yield
    except FileNotFoundError:
        raise ObjectNotFoundError(f"{uri}: no such file ({path})") from None
    except IsADirectoryError:
        raise StorageError(f"{uri}: is a directory, not a file ({path})") from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK):  # O_NOFOLLOW met a link (EMLINK: FreeBSD)
            raise StorageError(f"{uri}: a symbolic link in the path; {REGULAR_FILES_RULE}") from None
        raise StorageError(f"{uri}: cannot read {path}: {exc.strerror or exc}") from None


def _fsync_dir(path: os.PathLike[str]) -> None:
    """Make a rename or link durable: the directory entry is data of its directory."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class S3Backend:
    """s3:// URIs on AWS or any S3-compatible server (AWS_ENDPOINT_URL).

    Credentials come from the environment (pods get them as secretKeyRefs), or from an explicit mapping
    with the same AWS_* keys (the operator, which reads each resource's Secret and must never fall back
    on its own environment: an empty mapping is anonymous access)."""

    def __init__(self, credentials: Mapping[str, str] | None = None):
        self._credentials = dict(credentials) if credentials is not None else None

    def read(self, uri: StorageUri) -> bytes:
        with _s3_errors(uri, "read"):
            return _s3_client(self._credentials).get_object(Bucket=uri.location, Key=uri.path)["Body"].read()

    def chunks(self, uri: StorageUri) -> Iterator[bytes]:
        with _s3_errors(uri, "read"):
            body = _s3_client(self._credentials).get_object(Bucket=uri.location, Key=uri.path)["Body"]
            try:
                yield from body.iter_chunks(CHUNK_BYTES)
            finally:
                body.close()

    def exists(self, uri: StorageUri) -> bool:
        try:
            with _s3_errors(uri, "check"):
                _s3_client(self._credentials).head_object(Bucket=uri.location, Key=uri.path)
        except ObjectNotFoundError:
            return False
        return True

    def write(self, uri: StorageUri, data: bytes) -> None:
        with _s3_errors(uri, "write"):
            _s3_client(self._credentials).put_object(Bucket=uri.location, Key=uri.path, Body=data)

    def write_new(self, uri: StorageUri, data: bytes) -> None:
        # Conditional write (If-None-Match: *): S3 refuses it with 412 when the key exists.
        with _s3_errors(uri, "create", exists_message=f"{uri} already exists"):
            _s3_client(self._credentials).put_object(Bucket=uri.location, Key=uri.path, Body=data, IfNoneMatch="*")

    def move(self, src: StorageUri, dst: StorageUri) -> None:
        # Server-side copy: the bytes do not travel through the trainer twice (limit 5 GB per object).
        with _s3_errors(dst, "write"):
            _s3_client(self._credentials).copy_object(Bucket=dst.location, Key=dst.path,
                                     CopySource={"Bucket": src.location, "Key": src.path})
        self.delete(src)

    def list_keys(self, prefix: StorageUri) -> Iterator[str]:
        base = f"{prefix.path}/" if prefix.path else ""
        with _s3_errors(prefix, "list"):
            paginator = _s3_client(self._credentials).get_paginator("list_objects_v2")
            pages = paginator.paginate(Bucket=prefix.location, Prefix=base)
            for page in pages:
                for obj in page.get("Contents", ()):
                    rel = obj["Key"][len(base):]
                    if not any(part.startswith(".") for part in rel.split("/")[:-1]):
                        yield rel

    def delete(self, uri: StorageUri) -> None:
        with _s3_errors(uri, "delete"):  # S3 answers 204 for a key that is not there
            _s3_client(self._credentials).delete_object(Bucket=uri.location, Key=uri.path)

    def delete_tree(self, prefix: StorageUri) -> None:
        for rel in list(self.list_keys(prefix)):
            self.delete(prefix.child(rel))


@contextmanager
def _s3_errors(uri: StorageUri, action: str, exists_message: str | None = None) -> Iterator[None]:
    """Turn botocore errors into StorageError/ObjectNotFoundError naming the URI (never credentials)."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if exists_message and (code in ("PreconditionFailed", "412") or status == 412):
            raise VersionExistsError(exists_message) from None
        if code in ("NoSuchKey", "NoSuchBucket", "404", "NotFound") or status == 404:
            what = f"bucket '{uri.location}' does not exist" if code == "NoSuchBucket" else "not found"
            raise ObjectNotFoundError(f"{uri}: {what}") from None
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch") or status == 403:
            raise StorageError(f"{uri}: access denied ({code}) on {action}; check the storage credentials "
                               f"(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)") from None
        raise StorageError(f"{uri}: S3 {action} failed: {code} {error.get('Message', '')}".rstrip()) from None
    except NoCredentialsError:
        raise StorageError(f"{uri}: no S3 credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY") from None
    except BotoCoreError as exc:  # unreachable endpoint, timeouts: the message names the endpoint, no secrets
        raise StorageError(f"{uri}: S3 {action} failed: {exc}") from None


_client_lock = threading.Lock()


@lru_cache(maxsize=16)
def _client_for(endpoint: str | None, region: str, access_key: str | None, secret_key: str | None = None,
                session_token: str | None = None, anonymous: bool = False) -> Any:
    import boto3  # imported on first S3 use: file:// users do not pay its import time
    from botocore import UNSIGNED
    from botocore.config import Config

    # S3-compatible servers behind a custom endpoint rarely resolve bucket.host names: use path style.
    config = Config(s3={"addressing_style": "path"} if endpoint else {},
                    retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=10, read_timeout=60,
                    **({"signature_version": UNSIGNED} if anonymous else {}))
    keys = ({"aws_access_key_id": access_key, "aws_secret_access_key": secret_key, "aws_session_token": session_token}
            if secret_key else {})
    return boto3.session.Session().client("s3", endpoint_url=endpoint or None, region_name=region, config=config,
                                          **keys)


def _s3_client(credentials: Mapping[str, str] | None = None) -> Any:
    # Keyed by the settings so that a changed endpoint or key (tests, rotation) gets a new client.
    settings: Mapping[str, str] = os.environ if credentials is None else credentials
    # Explicit credentials without keys are anonymous: never boto3's default chain (the operator's own
    # environment, instance profile or service-account role) on behalf of someone else's resource.
    anonymous = credentials is not None and not settings.get("AWS_SECRET_ACCESS_KEY")
    # One client per settings, built once: without the lock, threads that need the same new client at the
    # same moment (the operator's workers at start-up) each built one, seconds of CPU apiece (bench/operator).
    with _client_lock:
        return _client_for(settings.get("AWS_ENDPOINT_URL_S3") or settings.get("AWS_ENDPOINT_URL"),
                           settings.get("AWS_REGION") or settings.get("AWS_DEFAULT_REGION") or "us-east-1",
                           settings.get("AWS_ACCESS_KEY_ID"), settings.get("AWS_SECRET_ACCESS_KEY"),
                           settings.get("AWS_SESSION_TOKEN"), anonymous)


_S3 = S3Backend()


def backend_for(uri: StorageUri, credentials: Mapping[str, str] | None = None) -> Backend:
    """The backend of `uri` and what is below it; `credentials` None reads the environment, a mapping (even
    empty) replaces it. On a filesystem, no link is followed below `uri` (FileBackend's root)."""
    if uri.scheme != "s3":
        return FileBackend(uri.local_path())
    return S3Backend(credentials) if credentials is not None else _S3


def read_capped(backend: Backend, uri: StorageUri, max_bytes: int, what: str = "object",
                setting: str | None = None) -> bytes:
    """The object's bytes, refusing (ObjectTooLargeError, a StorageError) one larger than `max_bytes` before
    holding more; the message names `setting`, the variable that sets the limit, when there is one."""
    parts, size = [], 0
    for chunk in backend.chunks(uri):
        size += len(chunk)
        if size > max_bytes:
            named = f" ({setting})" if setting else ""
            raise ObjectTooLargeError(f"{uri}: the {what} is larger than the limit of {max_bytes} bytes{named}")
        parts.append(chunk)
    return b"".join(parts)


def read_object(uri: str, *, field: str = "uri", credentials: Mapping[str, str] | None = None,
                max_bytes: int | None = None) -> bytes:
    """The bytes of one object (a dataset, a file): s3://bucket/key, file:///path or pvc://claim/path.
    `credentials` (AWS_* keys) replace the environment's, as for open_store; with `max_bytes`, a bigger
    object is refused while it streams."""
    parsed = parse_uri(uri, field=field)
    if not parsed.path or (parsed.scheme == "s3" and parsed.path.endswith("/")):
        raise ObjectNotFoundError(f"{field} '{uri}' names no object")
    backend = backend_for(parsed, credentials)
    return backend.read(parsed) if max_bytes is None else read_capped(backend, parsed, max_bytes, field)
