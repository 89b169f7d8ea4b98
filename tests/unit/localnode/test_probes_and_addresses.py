"""Probe thresholds, the downward API and pod address allocation."""
from __future__ import annotations

from modelloop_localnode.addresses import AddressPool
from modelloop_localnode.downward import field_value, resource_value
from modelloop_localnode.probes import ProbeTracker


def test_readiness_needs_success_threshold_to_pass_and_failure_threshold_to_fail():
    probe = ProbeTracker("readiness", {"successThreshold": 2, "failureThreshold": 2, "periodSeconds": 1}, started=0)
    assert probe.result is False
    assert not probe.record(True, "", 1) and probe.result is False
    assert probe.record(True, "", 2) and probe.result is True
    assert not probe.record(False, "down", 3) and probe.result is True
    assert probe.record(False, "down", 4) and probe.result is False
    assert probe.next_due == 5 and not probe.exhausted


def test_liveness_is_exhausted_after_consecutive_failures_only():
    probe = ProbeTracker("liveness", {"failureThreshold": 3, "initialDelaySeconds": 5}, started=100)
    assert probe.next_due == 105
    for ok in (False, False, True, False, False):
        probe.record(ok, "refused", 0)
    assert not probe.exhausted
    probe.record(False, "refused", 0)
    assert probe.exhausted and probe.message == "refused"


def test_addresses_are_unique_reused_after_release_and_never_the_loopback_host():
    pool = AddressPool("10.245.210.0/24")
    a, b = pool.allocate("a"), pool.allocate("b")
    assert a != b and pool.allocate("a") == a
    pool.release("a")
    assert pool.allocate("c") == a
    assert pool.allocate("d", preferred="10.245.210.77") == "10.245.210.77"
    assert pool.allocate("e", preferred=b) != b, "an address held by another pod is not handed out twice"
    loopback = AddressPool("127.0.0.0/16")
    assert loopback.allocate("x") == "127.0.1.1"


def test_downward_api_fields_and_resources():
    pod = {"metadata": {"name": "p", "namespace": "ns", "uid": "u", "labels": {"app": "web"}},
           "spec": {"nodeName": "n", "containers": [{"name": "c", "resources": {"limits": {"memory": "1Gi"},
                                                                                "requests": {"cpu": "250m"}}}]}}
    assert field_value(pod, "metadata.labels['app']", "10.245.0.1", "127.0.0.1") == "web"
    assert field_value(pod, "status.podIP", "10.245.0.1", "127.0.0.1") == "10.245.0.1"
    assert field_value(pod, "spec.nodeName", "", "") == "n"
    assert resource_value(pod, "c", {"resource": "limits.memory", "divisor": "1Mi"}, {}) == "1024"
    assert resource_value(pod, "c", {"resource": "requests.cpu", "divisor": "1m"}, {}) == "250"
    assert resource_value(pod, "c", {"resource": "limits.cpu"}, {"cpu": "2"}) == "2"
