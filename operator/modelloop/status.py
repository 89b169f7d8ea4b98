"""Conditions and the status conventions every controller follows (kstatus / API conventions).

Pure functions: the controllers compute the new condition list from the old one and what they
observed, then write it. `lastTransitionTime` changes only when a condition's status changes.
Ready is always present; Reconciling and Stalled are "abnormal-true": present and True only while
work is in progress or a user must act, otherwise False.
"""
from __future__ import annotations

from dataclasses import dataclass

from .meta import rfc3339
from .reasons import PROBLEMS, DeploymentReason


@dataclass(frozen=True)
class Cond:
    """A condition to set: type, status (True/False/Unknown), reason (CamelCase) and message."""

    type: str
    status: str
    reason: str
    message: str = ""

    @classmethod
    def of(cls, type_: str, ok: bool, reason: str, message: str = "") -> "Cond":
        return cls(type_, "True" if ok else "False", reason, message)


def find(conditions: list[dict] | None, type_: str) -> dict | None:
    return next((c for c in conditions or () if c.get("type") == type_), None)


def is_true(conditions: list[dict] | None, type_: str) -> bool:
    c = find(conditions, type_)
    return bool(c and c.get("status") == "True")


def merge_conditions(old: list[dict] | None, new: list[Cond], generation: int | None, now: str | None = None) -> list[dict]:
    """The condition list after setting `new` (others are kept), in a stable order."""
    now = now or rfc3339()
    out = {c["type"]: dict(c) for c in old or ()}
    for c in new:
        prev = out.get(c.type)
        changed = prev is None or prev.get("status") != c.status
        out[c.type] = {
            "type": c.type, "status": c.status, "reason": c.reason, "message": c.message[:32768],
            "lastTransitionTime": now if changed else prev.get("lastTransitionTime", now),
            **({"observedGeneration": generation} if generation is not None else {}),
        }
    order = {"Ready": 0, "Reconciling": 1, "Stalled": 2}
    return sorted(out.values(), key=lambda c: (order.get(c["type"], 3), c["type"]))


def changed_conditions(old: list[dict] | None, new: list[dict]) -> list[dict]:
    """Conditions whose status or reason differ between `old` and `new`: the transitions worth an Event."""
    before = {c["type"]: (c.get("status"), c.get("reason")) for c in old or ()}
    return [c for c in new if before.get(c["type"]) != (c["status"], c["reason"])]


def transition_events(old: list[dict] | None, new: list[dict], decided: bool) -> list[tuple[str, str, str]]:
    """The (type, reason, message) Events for the transitions of a ModelTraining's or ModelDeployment's
    conditions: Ready either way, Stalled turning True, and Reconciling for a store that stopped answering.
    Warnings when the reason is in PROBLEMS. A Normal one is left out when the reconcile's own decision
    events already said it (`decided`: RunStarted, Promoted, ...), and a reason with its message is posted once
    (Stalled and Ready often carry the same)."""
    events: list[tuple[str, str, str]] = []
    for c in changed_conditions(old, new):
        wanted = ((c["type"] == "Ready" or (c["type"] == "Stalled" and c["status"] == "True"))
                  or (c["type"] == "Reconciling" and c["reason"] == DeploymentReason.STORAGE_UNAVAILABLE))
        type_ = "Warning" if c["reason"] in PROBLEMS else "Normal"
        event = (type_, c["reason"], c["message"] or f"{c['type']} is {c['status']}")
        if wanted and (type_ == "Warning" or not decided) and event not in events:
            events.append(event)
    return events
