"""The Node object and its heartbeat: registration, the Lease in kube-node-lease, and node status
(capacity from this machine, the Ready condition)."""
from __future__ import annotations

import os
import platform
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from .kube import MERGE_PATCH, ApiError, Kube
from .log import log

LOCAL_NODE_LABEL = "modelloop.dev/local-node"
POD_CIDR_ANNOTATION = "modelloop.dev/pod-cidr"
LEASE_DURATION_S = 40
LEASE_RENEW_S = 10
STATUS_REFRESH_S = 30
AGENT_VERSION = "modelloop-localnode/0.1.0"


def micro_time(ts: float | None = None) -> str:
    ts = time.time() if ts is None else ts
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1e6):06d}Z"


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def machine_capacity(max_pods: int, state_dir: Path) -> dict[str, str]:
    meminfo = _read("/proc/meminfo").splitlines()
    memory_kib = next((line.split()[1] for line in meminfo if line.startswith("MemTotal:")), "0")
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return {"cpu": str(cpus), "memory": f"{memory_kib}Ki", "pods": str(max_pods),
            "ephemeral-storage": f"{shutil.disk_usage(state_dir).total // 1024}Ki"}


def architecture() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(machine, machine)


def render_node(name: str, pod_cidr: str, taints: list[dict]) -> dict:
    """The Node as registered: not managed by kwok (no kwok annotation), untainted unless asked."""
    labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": architecture(),
              LOCAL_NODE_LABEL: "true"}
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": labels,
                         "annotations": {"node.alpha.kubernetes.io/ttl": "0", POD_CIDR_ANNOTATION: pod_cidr}},
            "spec": {"taints": taints} if taints else {}}


def render_node_status(capacity: dict[str, str], ready: bool, message: str, since: str, kubelet_version: str,
                       host_ip: str, hostname: str) -> dict:
    now = micro_time()[:19] + "Z"

    def condition(kind: str, status: str, reason: str, text: str) -> dict:
        return {"type": kind, "status": status, "reason": reason, "message": text, "lastHeartbeatTime": now,
                "lastTransitionTime": since}

    return {
        "capacity": capacity,
        "allocatable": capacity,
        "conditions": [
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory",
                      "kubelet has sufficient memory available"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            condition("Ready", "True" if ready else "False", "KubeletReady" if ready else "KubeletNotReady", message),
        ],
        "addresses": [{"type": "InternalIP", "address": host_ip}, {"type": "Hostname", "address": hostname}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
        "nodeInfo": {
            "machineID": _read("/etc/machine-id"), "systemUUID": _read("/sys/class/dmi/id/product_uuid"),
            "bootID": _read("/proc/sys/kernel/random/boot_id"), "kernelVersion": platform.release(),
            "osImage": _read("/etc/os-release").partition('PRETTY_NAME="')[2].partition('"')[0] or platform.system(),
            "containerRuntimeVersion": AGENT_VERSION, "kubeletVersion": kubelet_version, "kubeProxyVersion": "",
            "operatingSystem": "linux", "architecture": architecture(),
        },
    }


class NodeHeartbeat:
    """Registers the Node and keeps its Lease and Ready condition fresh from a background thread."""

    def __init__(self, kube: Kube, name: str, pod_cidr: str, taints: list[dict], capacity: dict[str, str],
                 host_ip: str) -> None:
        self.kube = kube
        self.name = name
        self.pod_cidr = pod_cidr
        self.taints = taints
        self.capacity = capacity
        self.host_ip = host_ip
        self.uid = ""
        self.since = micro_time()[:19] + "Z"
        self.kubelet_version = "v0.0.0"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="node heartbeat", daemon=True)

    def register(self) -> None:
        try:
            self.kubelet_version = self.kube.get("/version").get("gitVersion", self.kubelet_version)
        except ApiError:
            pass
        node = render_node(self.name, self.pod_cidr, self.taints)
        try:
            created = self.kube.create("/api/v1/nodes", node)
            log("node.registered", node=self.name, pod_cidr=self.pod_cidr)
        except ApiError as e:
            if e.status != 409:
                raise
            patch = {"metadata": {"labels": node["metadata"]["labels"], "annotations": node["metadata"]["annotations"]}}
            created = self.kube.patch(f"/api/v1/nodes/{self.name}", patch, MERGE_PATCH)
            log("node.reused", node=self.name, pod_cidr=self.pod_cidr)
        self.uid = created["metadata"]["uid"]
        self.post_status(ready=True)
        self.renew_lease()

    def post_status(self, ready: bool, message: str = "modelloop local node agent is posting ready status",
                    timeout: float | None = None) -> None:
        status = render_node_status(self.capacity, ready, message, self.since, self.kubelet_version, self.host_ip,
                                    self.name)
        self.kube.patch(f"/api/v1/nodes/{self.name}/status", {"status": status}, timeout=timeout)

    def renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.name}"
        spec = {"holderIdentity": self.name, "leaseDurationSeconds": LEASE_DURATION_S, "renewTime": micro_time()}
        try:
            self.kube.patch(path, {"spec": spec}, MERGE_PATCH)
        except ApiError as e:
            if e.status != 404:
                raise
            owner = {"apiVersion": "v1", "kind": "Node", "name": self.name, "uid": self.uid}
            body: dict[str, Any] = {
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.name, "namespace": "kube-node-lease", "ownerReferences": [owner]},
                "spec": spec}
            self.kube.create("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", body)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        last_status = time.monotonic()
        while not self._stop.wait(LEASE_RENEW_S):
            try:
                self.renew_lease()
                if time.monotonic() - last_status >= STATUS_REFRESH_S:
                    self.post_status(ready=True)
                    last_status = time.monotonic()
            except ApiError as e:
                log("node.heartbeat_failed", level="warning", node=self.name, error=str(e)[:300])
                if e.status == 404:  # someone deleted the Node: register again, as kubelet does
                    self._try(self.register)
            except Exception as e:  # noqa: BLE001 - the next beat retries
                log("node.heartbeat_failed", level="warning", node=self.name, error=str(e)[:300])

    def _try(self, action) -> None:
        try:
            action()
        except Exception as e:  # noqa: BLE001
            log("node.register_failed", level="warning", node=self.name, error=str(e)[:300])

    def stop(self) -> None:
        """Stop beating and say so: the node controller then marks this node's pods not ready."""
        self._stop.set()
        self.since = micro_time()[:19] + "Z"
        try:
            self.post_status(ready=False, message="modelloop local node agent stopped", timeout=2)
        except Exception as e:  # noqa: BLE001 - the API server may already be gone (cluster down)
            log("node.not_ready_failed", level="warning", node=self.name, error=str(e)[:200])
