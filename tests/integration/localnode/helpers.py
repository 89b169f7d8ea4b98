"""Helpers for the local node tests: pod manifests of the runtime image, the processes a node runs,
waiting on pods and EndpointSlices, and a private agent a test may kill and restart."""
from __future__ import annotations

import json
import signal
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from modelloop_localnode.processes import agent_id, marked_processes, marker_key
from tests.fixtures.cluster import CLUSTER_DIR, ROOT, Cluster, wait_for

LOCAL_NODE = "modelloop-local"
RUNTIME_IMAGE = "ghcr.io/modelloop/runtime:test"
AGENT = ROOT / ".venv" / "bin" / "modelloop-localnode"
LOCAL_AGENT = agent_id(LOCAL_NODE, CLUSTER_DIR / "localnode")  # how the shared agent marks its processes


def node_ready(cluster: Cluster, name: str) -> bool:
    proc = cluster.kubectl("get", "node", name, "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
                           check=False)
    return proc.returncode == 0 and proc.stdout.strip() == "True"


def container(name: str, command: list[str], **fields) -> dict:
    return {"name": name, "image": RUNTIME_IMAGE, "command": command, **fields}


def pod_spec(*containers: dict, node: str = LOCAL_NODE, **fields) -> dict:
    return {"nodeSelector": {"kubernetes.io/hostname": node}, "terminationGracePeriodSeconds": 5,
            "containers": list(containers), **fields}


def pod(name: str, namespace: str, spec: dict, labels: dict | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels or {}}, "spec": spec}


def pod_processes(namespace: str, agent: str = LOCAL_AGENT) -> dict[int, str]:
    """pid -> marker of the live processes an agent runs for the pods of `namespace`."""
    return {pid: m for pid, m in marked_processes(agent).items() if marker_key(m).startswith(f"{namespace}/")}


def wait_phase(cluster: Cluster, namespace: str, name: str, *phases: str, timeout: float = 30) -> dict:
    def check():
        obj = cluster.get("pod", name, "-n", namespace)
        return obj if obj.get("status", {}).get("phase") in phases else None
    return wait_for(check, timeout=timeout, message=f"pod {namespace}/{name} in phase {' or '.join(phases)}")


def wait_ready(cluster: Cluster, namespace: str, name: str, timeout: float = 30) -> dict:
    def check():
        obj = cluster.get("pod", name, "-n", namespace)
        ready = [c for c in obj.get("status", {}).get("conditions", []) if c["type"] == "Ready"]
        return obj if ready and ready[0]["status"] == "True" else None
    return wait_for(check, timeout=timeout, message=f"pod {namespace}/{name} Ready")


def endpoints(cluster: Cluster, namespace: str, service: str) -> list[dict]:
    slices = cluster.get("endpointslices", "-n", namespace, "-l", f"kubernetes.io/service-name={service}")
    return [e for s in slices["items"] for e in s.get("endpoints") or []]


@dataclass
class AgentProcess:
    """A private agent (its own node, state dir and pod range) that a test may kill and restart."""

    cluster: Cluster
    node: str
    state_dir: Path
    pod_cidr: str
    proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.state_dir.parent / f"{self.node}.log", "ab")
        self.proc = subprocess.Popen(
            [str(AGENT), f"--kubeconfig={self.cluster.kubeconfig}", f"--node-name={self.node}",
             f"--state-dir={self.state_dir}", f"--pod-cidr={self.pod_cidr}", "--shutdown-grace=2",
             "--register-with-taint=modelloop.dev/test=private:NoSchedule"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: node_ready(self.cluster, self.node), timeout=30, message=f"private agent node {self.node} Ready")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=20)

    def processes(self) -> dict[int, str]:
        return marked_processes(agent_id(self.node, self.state_dir))

    def recorded(self) -> dict[str, int]:
        return json.loads((self.state_dir / "processes.json").read_text())



def private_node_name() -> str:
    return f"localnode-test-{uuid.uuid4().hex[:6]}"
