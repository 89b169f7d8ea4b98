"""Leader election on a coordination.k8s.io Lease: of the operator's replicas exactly one reconciles.

The protocol is client-go's (and controller-runtime's): the leader renews the Lease every `retry` seconds;
a standby watches the Lease record and takes it once the record has not changed for the Lease's duration,
measured on the standby's own clock from when it first saw that record (so clocks need not agree). A leader
that cannot renew within `renew_deadline` (shorter than the duration) stops at once: it exits and the pod
restarts as a standby, before any standby can have taken over. On a graceful stop the leader gives the Lease
up, so that a rolling update or a drain hands over in about one `retry`.

`decide` is pure; `LeaderElector` does the I/O.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

from . import kube, metrics

log = logging.getLogger("modelloop.leader")

LEASE_API = "coordination.k8s.io/v1"


@dataclass(frozen=True)
class Timing:
    duration: float = 15.0        # a standby takes over a Lease unchanged for this long
    renew_deadline: float = 10.0  # a leader that could not renew for this long stops
    retry: float = 2.0            # how often the leader renews and a standby looks

    def __post_init__(self) -> None:
        if not 0 < self.retry < self.renew_deadline < self.duration:
            raise ValueError(f"leader election needs 0 < retry ({self.retry:g}s) < renew deadline "
                             f"({self.renew_deadline:g}s) < lease duration ({self.duration:g}s)")


@dataclass(frozen=True)
class Observed:
    """A Lease record (holder, renewTime, transitions) and when, on our clock, it was first seen."""

    record: tuple
    at: float


def record_of(lease: dict) -> tuple:
    spec = lease.get("spec") or {}
    return spec.get("holderIdentity"), spec.get("renewTime"), spec.get("leaseTransitions")


def decide(lease: dict | None, me: str, observed: Observed | None, now: float, duration: float
           ) -> tuple[str, Observed | None]:
    """What to do with the Lease as read: create it, renew ours, take it (free, or its holder stopped renewing:
    the record unchanged for its duration), or wait; and the observation to keep for the next look."""
    if lease is None:
        return "create", None
    record = record_of(lease)
    if observed is None or observed.record != record:
        observed = Observed(record, now)
    holder = record[0]
    if holder == me:
        return "renew", observed
    if not holder:
        return "take", observed
    lease_duration = (lease.get("spec") or {}).get("leaseDurationSeconds") or duration
    return ("take" if now - observed.at >= lease_duration else "wait"), observed


def micro_time(t: float | None = None) -> str:
    """A MicroTime, as Lease times are written."""
    return datetime.fromtimestamp(t if t is not None else time.time(), timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def default_identity() -> str:
    """The pod's name (unique among the replicas) and a random suffix (unique across restarts of one pod)."""
    return f"{os.environ.get('POD_NAME') or os.uname().nodename}_{os.urandom(4).hex()}"


class LeaderElector:
    def __init__(self, namespace: str, name: str, identity: str | None = None, timing: Timing = Timing(),
                 on_lost: Callable[[], None] | None = None, clock: Callable[[], float] = time.monotonic):
        self.namespace, self.name = namespace, name
        self.identity = identity or default_identity()
        self.timing, self.clock = timing, clock
        self.on_lost = on_lost or _exit_lost
        self._observed: Observed | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    # ------------------------------------------------------------------ one attempt
    def try_acquire_or_renew(self) -> str:
        """One look at the Lease, and the write it calls for: "leading", "standby" (another replica holds it), or
        "conflict" (another replica wrote between our read and our write: look again)."""
        lease = kube.get(LEASE_API, "Lease", self.namespace, self.name, timeout=self.timing.retry * 2)
        action, self._observed = decide(lease, self.identity, self._observed, self.clock(), self.timing.duration)
        if action == "wait":
            return "standby"
        now = micro_time()
        spec = {"holderIdentity": self.identity, "leaseDurationSeconds": int(self.timing.duration), "renewTime": now}
        try:
            if action == "create":
                kube.create({"apiVersion": LEASE_API, "kind": "Lease",
                             "metadata": {"name": self.name, "namespace": self.namespace},
                             "spec": {**spec, "acquireTime": now, "leaseTransitions": 0}}, timeout=self.timing.retry * 2)
            else:
                old = lease["spec"] if lease else {}
                if action == "take":
                    spec.update(acquireTime=now, leaseTransitions=(old.get("leaseTransitions") or 0) + 1)
                    log.info("leader=taking lease=%s/%s from=%s", self.namespace, self.name,
                             old.get("holderIdentity") or "nobody")
                kube.replace({**lease, "spec": {**old, **spec}}, timeout=self.timing.retry * 2)  # type: ignore[dict-item]
        except kube.Conflict:
            return "conflict"
        return "leading"

    # ------------------------------------------------------------------ lifecycle
    def acquire(self) -> bool:
        """Block until this replica leads, then keep renewing in the background; False when stopped first."""
        log.info("leader=waiting lease=%s/%s identity=%s", self.namespace, self.name, self.identity)
        metrics.LEADER.set(0)
        while not self._stop.is_set():
            try:
                if self.try_acquire_or_renew() == "leading":
                    break
            except Exception as e:  # noqa: BLE001 - the API server may be briefly unreachable: keep trying
                log.warning("leader=error lease=%s/%s error=%s", self.namespace, self.name, e)
            self._stop.wait(self.timing.retry)
        if self._stop.is_set():
            return False
        log.info("leader=acquired lease=%s/%s identity=%s", self.namespace, self.name, self.identity)
        metrics.LEADER.set(1)
        self._renewer = threading.Thread(target=self._renew, name="lease-renewer", daemon=True)
        self._renewer.start()
        return True

    def _renew(self) -> None:
        last = self.clock()
        while not self._stop.wait(self.timing.retry):
            try:
                state = self.try_acquire_or_renew()
            except Exception as e:  # noqa: BLE001 - retried until the renew deadline
                state, error = "error", f"{type(e).__name__}: {e}"
            if state == "leading":
                last = self.clock()
                continue
            lost = state == "standby"  # another replica holds the Lease now
            if lost or self.clock() - last >= self.timing.renew_deadline:
                reason = ("another replica holds the lease" if lost else
                          f"not renewed for {self.clock() - last:.1f}s" + (f" ({error})" if state == "error" else ""))
                metrics.LEADER.set(0)
                log.error("leader=lost lease=%s/%s identity=%s reason=%s", self.namespace, self.name, self.identity,
                          reason)
                self.on_lost()
                return

    def release(self) -> None:
        """Stop renewing and give the Lease up (if still ours), so a standby takes over at its next look."""
        self._stop.set()
        if self._renewer:
            self._renewer.join(timeout=self.timing.retry + 5)
        try:
            lease = kube.get(LEASE_API, "Lease", self.namespace, self.name)
            if lease and record_of(lease)[0] == self.identity:
                kube.replace({**lease, "spec": {**lease["spec"], "holderIdentity": None, "renewTime": micro_time(),
                                                "leaseDurationSeconds": 1}})
                log.info("leader=released lease=%s/%s identity=%s", self.namespace, self.name, self.identity)
        except Exception as e:  # noqa: BLE001 - the standby takes over after the duration anyway
            log.warning("leader=release_failed lease=%s/%s error=%s", self.namespace, self.name, e)
        metrics.LEADER.set(0)


def _exit_lost() -> None:
    """A replica that lost the Lease must stop reconciling at once: exit, and restart as a standby."""
    logging.shutdown()
    os._exit(1)
