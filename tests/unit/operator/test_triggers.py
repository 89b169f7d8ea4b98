"""What makes the controllers reconcile: their own writes do not, bursts coalesce, and a ModelTraining's
events reach only the deployments that follow it, only when what they read of it changed."""
from __future__ import annotations

import threading
import time

from modelloop import kube
from modelloop.controllers import deployment


def _obj(rv: str, name: str = "a", kind: str = "ModelDeployment") -> dict:
    return {"kind": kind, "metadata": {"name": name, "namespace": "n", "resourceVersion": rv}}


def test_own_write_is_the_exact_resource_version_the_write_returned():
    kube._remember(_obj("5"))
    assert kube.own_write(_obj("5"))
    assert not kube.own_write(_obj("6"))                        # anyone's later change
    assert not kube.own_write(_obj("5", name="b"))              # another object
    assert not kube.own_write(_obj("5", kind="Deployment"))     # another kind of the same name
    assert not kube.own_write({"kind": "ModelDeployment", "metadata": {"name": "a", "namespace": "n"}})


def test_triggers_coalesce_behind_a_queued_reconcile(monkeypatch):
    monkeypatch.setattr(kube, "get", lambda *a, **k: _obj("1", name="burst"))
    started, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def reconcile(obj: dict | None) -> None:
        calls.append(1)
        if len(calls) == 1:
            started.set()
            assert release.wait(10)

    first = threading.Thread(target=kube.converge, args=("K", "n", "burst", reconcile))
    first.start()
    assert started.wait(10)
    queued = threading.Thread(target=kube.converge, args=("K", "n", "burst", reconcile))
    queued.start()
    deadline = time.monotonic() + 10
    while not kube._gates[("K", "n", "burst")].queued:   # the second trigger waits for the lock
        assert time.monotonic() < deadline
        time.sleep(0.01)
    for _ in range(5):   # every further trigger meanwhile is answered by the queued reconcile
        kube.converge("K", "n", "burst", reconcile)
    release.set()
    first.join(10)
    queued.join(10)
    assert len(calls) == 2
    kube.converge("K", "n", "burst", reconcile)   # nothing queued any more: a trigger runs again
    assert len(calls) == 3
    assert ("K", "n", "burst") not in kube._gates   # a gate lives while it is used


def test_a_gate_goes_once_nobody_uses_it_even_after_a_failed_reconcile():
    def fails(obj: dict | None) -> None:
        raise RuntimeError("boom")

    before = len(kube._gates)
    for name in ("x", "y", "z"):
        kube.converge("K", "n", name, lambda obj: None, body=_obj("1", name=name))
        try:
            kube.converge("K", "n", name, fails, body=_obj("1", name=name))
        except RuntimeError:
            pass
        with kube.object_lock("K", "n", name):
            assert ("K", "n", name) in kube._gates
    assert len(kube._gates) == before


def test_a_reconcile_starts_from_the_newest_body_a_trigger_brought_and_a_conflict_reads_again(monkeypatch):
    reads: list[str] = []
    monkeypatch.setattr(kube, "get", lambda *a, **k: reads.append("GET") or _obj("7", name="c"))
    seen: list[str] = []

    def reconcile(obj: dict | None) -> None:
        seen.append(obj["metadata"]["resourceVersion"])
        obj["metadata"]["resourceVersion"] = "mutated"   # the reconcile's copy, never the event's
        if len(seen) < 3:
            raise kube.Conflict("changed")

    body = _obj("5", name="c")
    kube.converge("K", "n", "c", reconcile, body)
    assert seen == ["5", "7", "7"] and reads == ["GET", "GET"]
    assert body["metadata"]["resourceVersion"] == "5"
    seen.clear()
    kube.converge("K", "n", "c", lambda obj: seen.append(obj["metadata"]["resourceVersion"]))
    assert seen == ["7"]   # a trigger without a body (a child's event, the timer) reads the object


def _training(latest: int | None, uri: str = "s3://b/m") -> dict:
    return {"spec": {"output": {"uri": uri}}, "status": {"latestVersion": latest, "runs": [{"result": "Running"}]}}


def _deployment(name: str, namespace: str, follows: str | None) -> dict:
    return {"namespace": namespace, "name": name, "spec": {"model": {"fromTraining": follows} if follows else {}}}


def test_the_follower_index_maps_a_training_to_the_deployments_that_follow_it():
    assert deployment.followers(**_deployment("web", "ns1", "iris")) == {("ns1", "iris"): "web"}
    assert deployment.followers(**_deployment("pinned", "ns1", None)) == {}


def test_training_events_reach_followers_only_when_what_they_read_changed(monkeypatch):
    reconciled: list[str] = []
    monkeypatch.setattr(deployment, "reconcile", lambda namespace, name: reconciled.append(name))
    index = {("ns1", "iris"): ["follows"], ("ns1", "wine"): ["other"], ("ns2", "iris"): ["elsewhere"]}
    memos: dict[str, dict] = {"iris": {}, "wine": {}}   # kopf's memo of each training

    def event(type_: str, body: dict, name: str) -> None:
        deployment.on_training_event(type=type_, body=body, name=name, namespace="ns1", memo=memos[name],
                                     followers=index)

    event("ADDED", _training(None), "iris")
    assert reconciled == ["follows"]
    body = _training(None)
    body["status"]["runs"] = [{"result": "Succeeded"}]            # a run's progress: not the followers' concern
    event("MODIFIED", body, "iris")
    assert reconciled == ["follows"]
    event("MODIFIED", _training(1), "iris")
    assert reconciled == ["follows", "follows"]                   # a new latest version
    event("MODIFIED", _training(1, "s3://b/other"), "iris")
    assert reconciled == ["follows"] * 3                          # its output moved
    index = {("ns1", "wine"): ["follows", "other"]}               # the deployment now follows another training
    event("DELETED", _training(1, "s3://b/other"), "iris")
    assert reconciled == ["follows"] * 3
    event("MODIFIED", _training(2), "wine")
    assert reconciled == ["follows"] * 3 + ["follows", "other"]


def test_only_a_controllers_own_records_count_as_its_writes(monkeypatch):
    """A plain patch can be news to another controller (a DriftMonitor's retrain annotation on a ModelTraining):
    its echo must still reconcile. Status writes, applies and creates are what a reconcile records itself."""
    returned = _obj("9", name="iris", kind="ModelTraining")
    monkeypatch.setattr(kube, "_call", lambda *a, **k: returned)
    obj = {"apiVersion": "modelloop.dev/v1alpha1", **returned}
    kube.patch("modelloop.dev/v1alpha1", "ModelTraining", "n", "iris", {"metadata": {"annotations": {"a": "b"}}})
    assert not kube.own_write(returned)
    kube.patch_status(obj, {"phase": "Running"})
    assert kube.own_write(returned)
    returned["metadata"]["resourceVersion"] = "10"
    kube.apply(obj)
    assert kube.own_write(returned)
    returned["metadata"]["resourceVersion"] = "11"
    kube.create(obj)
    assert kube.own_write(returned)
