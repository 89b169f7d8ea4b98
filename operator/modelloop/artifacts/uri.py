"""Storage URIs: `s3://bucket/key`, `file:///abs/path`, `pvc://claim/path`, and where each one is.

`pvc://claim/path` is `$MODELLOOP_PVC_ROOT/claim/path` on the local filesystem (default root
/var/lib/modelloop/pvc): pods mount each claim at that place.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidUriError

SCHEMES = ("s3", "file", "pvc")
PVC_ROOT_ENV = "MODELLOOP_PVC_ROOT"
DEFAULT_PVC_ROOT = "/var/lib/modelloop/pvc"

_URI = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://(?P<rest>.*)$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_CLAIM = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class StorageUri:
    """A parsed storage URI. `location` is the bucket (s3) or claim (pvc), empty for file; `path` has no
    leading or trailing slash (s3, pvc) or is absolute (file)."""

    scheme: str
    location: str
    path: str

    def __str__(self) -> str:
        if self.scheme == "file":
            return f"file://{self.path}"
        return f"{self.scheme}://{self.location}/{self.path}" if self.path else f"{self.scheme}://{self.location}"

    def child(self, *parts: str) -> StorageUri:
        """The URI of `parts` below this one."""
        joined = "/".join(p.strip("/") for p in parts if p.strip("/"))
        if not joined:
            return self
        base = self.path.rstrip("/")
        return StorageUri(self.scheme, self.location, f"{base}/{joined}" if base or self.scheme == "file" else joined)

    def local_path(self) -> Path:
        """Where a file:// or pvc:// URI is on this machine."""
        if self.scheme == "file":
            return Path(self.path)
        if self.scheme == "pvc":
            return Path(os.environ.get(PVC_ROOT_ENV) or DEFAULT_PVC_ROOT, self.location, self.path)
        raise InvalidUriError(f"uri '{self}' is not on a filesystem (scheme {self.scheme})")


def parse_uri(uri: str, *, field: str = "uri") -> StorageUri:
    """Parse a storage URI; errors name `field`, the value and what is allowed."""
    if not isinstance(uri, str) or not uri:
        raise InvalidUriError(f"{field} {uri!r} is not a URI; expected s3://bucket/key, file:///abs/path or "
                              f"pvc://claim/path")
    match = _URI.match(uri)
    if not match:
        raise InvalidUriError(f"{field} '{uri}' has no scheme; allowed: {', '.join(SCHEMES)} "
                              f"(e.g. s3://bucket/key, file:///abs/path, pvc://claim/path)")
    scheme, rest = match["scheme"].lower(), match["rest"]
    if scheme not in SCHEMES:
        raise InvalidUriError(f"{field} '{uri}' has scheme '{scheme}'; allowed: {', '.join(SCHEMES)}")
    if "?" in rest or "#" in rest:
        raise InvalidUriError(f"{field} '{uri}' has a query or fragment; storage URIs have neither")
    if scheme == "file":
        if not rest.startswith("/"):
            raise InvalidUriError(f"{field} '{uri}' is not absolute; file URIs look like file:///abs/path")
        path = os.path.normpath(rest)
        if path.startswith("//"):  # normpath keeps a leading double slash (POSIX): it would be a host
            path = "/" + path.lstrip("/")
        return StorageUri("file", "", path)
    location, _, path = rest.partition("/")
    pattern, what = (_BUCKET, "bucket") if scheme == "s3" else (_CLAIM, "claim")
    if not pattern.match(location):
        raise InvalidUriError(f"{field} '{uri}' has an invalid {what} name '{location}'")
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise InvalidUriError(f"{field} '{uri}' contains '.' or '..' path segments")
    return StorageUri(scheme, location, "/".join(parts))
