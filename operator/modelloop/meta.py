"""Pure helpers about Kubernetes objects (no client, no kopf): what the renderers, the status conventions and the
controllers share."""
from __future__ import annotations

import re
from datetime import datetime, timezone

from .names import RECONCILE_ANNOTATION


def reconcilable(obj: dict | None) -> bool:
    """False for a deleted or deleting object, and for one a user paused with the annotation
    `modelloop.dev/reconcile: disabled` (its children and status are then left as they are)."""
    if obj is None or obj["metadata"].get("deletionTimestamp"):
        return False
    return (obj["metadata"].get("annotations") or {}).get(RECONCILE_ANNOTATION) != "disabled"


def owner_reference(owner: dict) -> dict:
    md = owner["metadata"]
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": md["name"], "uid": md["uid"],
            "controller": True, "blockOwnerDeletion": True}


def now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def rfc3339(t: datetime | None = None) -> str:
    return (t or now()).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_time(epoch: float) -> str:
    """RFC 3339 (UTC, seconds) of a Unix time, as status timestamps are written."""
    return rfc3339(datetime.fromtimestamp(epoch, timezone.utc))


def parse_time(text: str) -> float:
    """The Unix time of an RFC 3339 status timestamp."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def parse_duration(text: str) -> float:
    """Seconds of a Go-style duration ("90s", "5m", "1h30m", "250ms"), as the CRDs' duration fields hold."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"'{text}' is not a duration like 30s, 5m or 1h")
    return sum(float(n) * units[u] for n, u in parts)
