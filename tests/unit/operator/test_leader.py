"""Leader election decisions (pure) and the elector's writes, against a Lease kept in memory."""
from __future__ import annotations

import copy

import pytest

from modelloop import kube, leader
from modelloop.leader import LeaderElector, Observed, Timing, decide


def lease(holder: str | None, renew: str = "t0", transitions: int = 0, duration: int = 15) -> dict:
    return {"spec": {"holderIdentity": holder, "renewTime": renew, "leaseTransitions": transitions,
                     "leaseDurationSeconds": duration}}


def test_no_lease_is_created():
    assert decide(None, "a", None, now=0.0, duration=15) == ("create", None)


def test_our_own_lease_is_renewed():
    action, _ = decide(lease("a"), "a", None, now=0.0, duration=15)
    assert action == "renew"


def test_a_free_lease_is_taken():
    assert decide(lease(None), "a", None, now=0.0, duration=15)[0] == "take"
    assert decide(lease(""), "a", None, now=0.0, duration=15)[0] == "take"


def test_a_held_lease_is_taken_only_after_it_stayed_unchanged_for_its_duration_on_our_clock():
    held = lease("b", renew="t1")
    action, seen = decide(held, "a", None, now=100.0, duration=15)
    assert action == "wait" and seen == Observed(("b", "t1", 0), 100.0)
    # However old the renewTime looks, the clock that counts is ours, from when we first saw the record.
    assert decide(held, "a", seen, now=114.9, duration=15)[0] == "wait"
    assert decide(held, "a", seen, now=115.0, duration=15)[0] == "take"


def test_a_renewal_restarts_the_wait():
    _, seen = decide(lease("b", renew="t1"), "a", None, now=100.0, duration=15)
    action, seen = decide(lease("b", renew="t2"), "a", seen, now=114.0, duration=15)
    assert action == "wait" and seen.at == 114.0
    assert decide(lease("b", renew="t2"), "a", seen, now=128.0, duration=15)[0] == "wait"


def test_the_lease_s_own_duration_wins_over_ours():
    _, seen = decide(lease("b", duration=40), "a", None, now=0.0, duration=15)
    assert decide(lease("b", duration=40), "a", seen, now=30.0, duration=15)[0] == "wait"
    assert decide(lease("b", duration=40), "a", seen, now=40.0, duration=15)[0] == "take"


@pytest.mark.parametrize("retry, deadline, duration", [(2, 10, 10), (2, 2, 15), (0, 10, 15), (11, 10, 15)])
def test_timings_must_be_ordered(retry, deadline, duration):
    with pytest.raises(ValueError, match="retry"):
        Timing(duration=duration, renew_deadline=deadline, retry=retry)


class FakeLeases:
    """One Lease with resourceVersion semantics (create conflicts when it exists, replace when it changed)."""

    def __init__(self, monkeypatch):
        self.obj: dict | None = None
        self.version = 0
        monkeypatch.setattr(kube, "get", self.get)
        monkeypatch.setattr(kube, "create", self.create)
        monkeypatch.setattr(kube, "replace", self.replace)

    def get(self, api, kind, ns, name, timeout=60):
        return copy.deepcopy(self.obj)

    def create(self, obj, timeout=60):
        if self.obj is not None:
            raise kube.Conflict("exists")
        self._store(obj)

    def replace(self, obj, timeout=60):
        if obj["metadata"].get("resourceVersion") != str(self.version):
            raise kube.Conflict("changed")
        self._store(obj)

    def _store(self, obj):
        self.version += 1
        self.obj = copy.deepcopy(obj)
        self.obj["metadata"]["resourceVersion"] = str(self.version)


def test_two_electors_one_leads_the_other_takes_over_when_renewals_stop(monkeypatch):
    store = FakeLeases(monkeypatch)
    clock = [0.0]
    timing = Timing(duration=15, renew_deadline=10, retry=2)
    a = LeaderElector("ns", "op", "a", timing, clock=lambda: clock[0])
    b = LeaderElector("ns", "op", "b", timing, clock=lambda: clock[0])
    assert a.try_acquire_or_renew() == "leading"
    assert b.try_acquire_or_renew() == "standby"
    for t in (2, 4, 6, 8, 10, 12, 14, 16, 18):  # a renews: b never takes over
        clock[0] = t
        assert a.try_acquire_or_renew() == "leading"
        assert b.try_acquire_or_renew() == "standby"
    # a dies at 18: b takes over once the record it last saw is 15 s old on its clock
    for t in (20, 22, 24, 26, 28, 30, 32):
        clock[0] = t
        assert b.try_acquire_or_renew() == "standby"
    clock[0] = 34
    assert b.try_acquire_or_renew() == "leading"
    assert store.obj["spec"]["holderIdentity"] == "b" and store.obj["spec"]["leaseTransitions"] == 1
    # a, back, sees b's lease: standby
    assert a.try_acquire_or_renew() == "standby"


def test_a_released_lease_is_taken_at_the_next_look(monkeypatch):
    store = FakeLeases(monkeypatch)
    monkeypatch.setattr(leader.metrics.LEADER, "set", lambda v: None)
    a, b = LeaderElector("ns", "op", "a"), LeaderElector("ns", "op", "b")
    assert a.try_acquire_or_renew() == "leading"
    a.release()
    assert store.obj["spec"]["holderIdentity"] is None
    assert b.try_acquire_or_renew() == "leading"


def test_a_leader_that_cannot_renew_within_the_deadline_stops(monkeypatch):
    FakeLeases(monkeypatch)
    lost = []
    clock = [0.0]
    timing = Timing(duration=3, renew_deadline=0.2, retry=0.05)
    a = LeaderElector("ns", "op", "a", timing, on_lost=lambda: lost.append(clock[0]), clock=lambda: clock[0])
    assert a.acquire()

    def unreachable(*_, **__):
        clock[0] += 0.1
        raise ConnectionError("apiserver unreachable")
    monkeypatch.setattr(kube, "get", unreachable)
    a._renewer.join(timeout=10)
    assert lost and lost[0] >= 0.2
