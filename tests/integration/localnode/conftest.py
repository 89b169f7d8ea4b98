"""Fixtures for the local node tests: the shared node `modelloop-local` (hack/cluster.py starts its
agent) and a private agent with its own node, state dir and pod range."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.fixtures.cluster import Cluster

from tests.integration.localnode.helpers import LOCAL_NODE, AgentProcess, node_ready, private_node_name


@pytest.fixture(scope="session")
def local_node(cluster: Cluster) -> str:
    if not node_ready(cluster, LOCAL_NODE):
        pytest.fail(f"node {LOCAL_NODE} is not Ready: the embedded cluster runs without the local node agent; "
                    "restart it: .venv/bin/python hack/cluster.py down && .venv/bin/python hack/cluster.py up")
    return LOCAL_NODE


@pytest.fixture()
def private_agent(cluster: Cluster, tmp_path: Path):
    node = private_node_name()
    agent = AgentProcess(cluster, node, tmp_path / "state", "10.245.200.0/24")
    yield agent
    if agent.running():
        agent.terminate()
    for pid in agent.processes():  # the agent stops its processes; this is a last resort
        os.kill(pid, signal.SIGKILL)
    cluster.kubectl("delete", "node", node, "--wait=false", check=False)
