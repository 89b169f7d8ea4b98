"""The Node the local agent registers: Ready, untainted, labelled, with this machine's capacity and a
Lease kept fresh."""
from __future__ import annotations

import datetime as dt
import os

import pytest

from tests.integration.localnode.helpers import LOCAL_NODE

pytestmark = [pytest.mark.cluster, pytest.mark.localnode]


def test_local_node_is_ready_untainted_labelled_and_reports_machine_capacity(cluster, local_node):
    node = cluster.get("node", LOCAL_NODE)
    meta, spec, status = node["metadata"], node["spec"], node["status"]
    assert meta["labels"]["kubernetes.io/hostname"] == LOCAL_NODE
    assert meta["labels"]["modelloop.dev/local-node"] == "true"
    assert "kwok.x-k8s.io/node" not in meta.get("annotations", {}), "kwok must not manage the local node"
    assert not spec.get("taints"), "modelloop's pods must be able to land on the local node"
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    assert status["capacity"]["pods"] == "110"
    assert status["capacity"]["cpu"] == str(len(os.sched_getaffinity(0)))
    assert status["capacity"]["memory"].endswith("Ki") and int(status["capacity"]["memory"][:-2]) > 0
    assert {"type": "InternalIP", "address": "127.0.0.1"} in status["addresses"]


def test_local_node_lease_is_renewed(cluster, local_node):
    lease = cluster.get("lease", LOCAL_NODE, "-n", "kube-node-lease")
    assert lease["spec"]["holderIdentity"] == LOCAL_NODE
    renewed = dt.datetime.fromisoformat(lease["spec"]["renewTime"].replace("Z", "+00:00"))
    age = dt.datetime.now(dt.timezone.utc) - renewed
    assert age.total_seconds() < lease["spec"]["leaseDurationSeconds"]
