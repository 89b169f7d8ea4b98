"""Restarting the agent: a killed agent leaves processes behind; the next one clears them and runs each
pod exactly once more (Always) or fails it (Never); a stopped agent leaves nothing running."""
from __future__ import annotations

import urllib.request

import pytest

from modelloop_localnode.processes import marker_key
from tests.fixtures.cluster import wait_for
from tests.integration.localnode.helpers import container, pod, wait_phase, wait_ready

pytestmark = [pytest.mark.cluster, pytest.mark.localnode]

SERVER = ["python", "-m", "http.server", "8080", "--bind", "$(MODELLOOP_POD_IP)"]


def private_pod(name: str, namespace: str, node: str, command: list[str], restart_policy: str) -> dict:
    spec = {"nodeName": node, "restartPolicy": restart_policy, "terminationGracePeriodSeconds": 2,
            "containers": [container("main", command)]}
    return pod(name, namespace, spec)


def keys(processes: dict[int, str]) -> list[str]:
    return sorted(marker_key(marker) for marker in processes.values())


def test_killed_agent_restarted_leaves_no_orphans_or_duplicate_processes(cluster, namespace, private_agent):
    agent = private_agent
    agent.start()
    cluster.apply(private_pod("server", namespace, agent.node, SERVER, "Always"))
    cluster.apply(private_pod("once", namespace, agent.node, ["python", "-c", "import time; time.sleep(3600)"], "Never"))
    ip = wait_ready(cluster, namespace, "server")["status"]["podIP"]
    wait_phase(cluster, namespace, "once", "Running")
    before = wait_for(lambda: agent.processes() if len(agent.processes()) == 2 else None, timeout=10,
                      message="one process per pod")
    assert sorted(agent.recorded()) == [f"{namespace}/once/main", f"{namespace}/server/main"]

    agent.kill()
    assert set(agent.processes()) == set(before), "SIGKILL leaves the pod processes orphaned"

    agent.start()
    wait_for(lambda: not set(agent.processes()) & set(before), timeout=15, message="the orphans to be stopped")

    def restarted():
        status = cluster.get("pod", "server", "-n", namespace)["status"]
        return status if status["containerStatuses"][0]["restartCount"] == 1 and status["phase"] == "Running" else None
    status = wait_for(restarted, timeout=20, message="the server pod to run again")
    assert status["podIP"] == ip, "a pod keeps its address across agent restarts"
    once = wait_phase(cluster, namespace, "once", "Failed", timeout=20)
    assert once["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] == "AgentRestarted"
    wait_ready(cluster, namespace, "server")
    assert keys(agent.processes()) == [f"{namespace}/server/main"], "exactly one process: no duplicate, no orphan"
    with urllib.request.urlopen(f"http://{ip}:8080/", timeout=3) as r:
        assert r.status == 200

    assert agent.terminate() == 0
    assert agent.processes() == {}, "a stopped agent leaves no process running"
    assert agent.recorded() == {}
    ready = [c for c in cluster.get("node", agent.node)["status"]["conditions"] if c["type"] == "Ready"]
    assert ready[0]["status"] == "False"
