"""The local node agent (`modelloop-localnode`): registers a Node, watches the pods bound to it and
runs each through a PodWorker; on SIGTERM/SIGINT it stops every process it started.

    modelloop-localnode --kubeconfig=K --node-name=modelloop-local --state-dir=D --pvc-root=P

It also provisions the PersistentVolumeClaims of its pods (provisioner.py).

State directory layout: processes.json (`{"<ns>/<pod>/<container>": pid}`), pods/<ns>_<pod>_<uid>/
(volumes, per-container scratch, the PVC root of the pod), logs/<ns>_<pod>_<uid>/<container>/<restart>.log.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

from .addresses import AddressPool, ensure_local_range
from .kube import ApiError, Kube
from .log import log
from .node import NodeHeartbeat, machine_capacity
from .podworker import PodWorker
from .processes import ProcessRegistry, agent_id, alive, kill_marked, signal_group, stop_leftovers
from .provisioner import Provisioner
from .translate import DEFAULT_ENTRYPOINT

DEFAULT_POD_CIDR = "10.245.0.0/16"
HOST_IP = "127.0.0.1"


def parse_taint(text: str) -> dict:
    """`key=value:Effect` or `key:Effect`, as kubelet's --register-with-taints."""
    spec, _, effect = text.rpartition(":")
    if effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute") or not spec:
        raise argparse.ArgumentTypeError(f"taint {text!r}: expected key=value:Effect with Effect one of "
                                         "NoSchedule, PreferNoSchedule, NoExecute")
    key, _, value = spec.partition("=")
    return {"key": key, "value": value, "effect": effect} if value else {"key": key, "effect": effect}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="modelloop-localnode", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"), help="kubeconfig of the cluster to join")
    p.add_argument("--node-name", default="modelloop-local", help="name of the Node to register (default %(default)s)")
    p.add_argument("--state-dir", type=Path, default=Path(".localnode"),
                   help="processes.json, pod directories and container logs (default %(default)s)")
    p.add_argument("--pvc-root", type=Path, default=None,
                   help="PersistentVolumeClaims live in <pvc-root>/<namespace>/<claim> (default <state-dir>/pvc)")
    p.add_argument("--pod-cidr", default=DEFAULT_POD_CIDR,
                   help="pod IPs come from this range, made local with `ip route add local <cidr> dev lo` "
                        "(default %(default)s; agents on one host need disjoint ranges)")
    p.add_argument("--runnable-image", action="append", default=[], metavar="IMAGE",
                   help="also run this image (a repository: any tag; with a tag or digest: exactly); repeatable")
    p.add_argument("--default-entrypoint", default=DEFAULT_ENTRYPOINT,
                   help="what a container without `command` runs (default %(default)s)")
    p.add_argument("--storage-class", default="modelloop-local",
                   help="StorageClass whose claims this node provisions as host directories; created if absent, "
                        "the default class when the cluster has none; empty: no provisioning (default %(default)s)")
    p.add_argument("--max-pods", type=int, default=110)
    p.add_argument("--register-with-taint", action="append", default=[], type=parse_taint, metavar="KEY=VALUE:EFFECT",
                   help="taint the Node at registration; repeatable")
    p.add_argument("--shutdown-grace", type=float, default=5.0,
                   help="seconds between SIGTERM and SIGKILL for pod processes when the agent stops")
    return p.parse_args(argv)


class Agent:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.node_name: str = args.node_name
        self.state_dir: Path = args.state_dir.resolve()
        self.pvc_root: Path = (args.pvc_root or self.state_dir / "pvc").resolve()
        self.bin_dir = Path(sys.prefix) / "bin"
        self.runnable_images: list[str] = args.runnable_image
        self.default_entrypoint: str = args.default_entrypoint
        self.host_ip = HOST_IP
        self.kube = Kube(args.kubeconfig)
        self.stopping = threading.Event()
        for d in (self.state_dir, self.state_dir / "pods", self.state_dir / "logs", self.pvc_root):
            d.mkdir(parents=True, exist_ok=True)
        self.agent_id = agent_id(self.node_name, self.state_dir)  # marks the processes this agent starts
        self.registry = ProcessRegistry(self.state_dir / "processes.json", self.agent_id)
        self.allocatable = machine_capacity(args.max_pods, self.state_dir)
        self.addresses: AddressPool
        self.node: NodeHeartbeat
        self.workers: dict[str, PodWorker] = {}
        self._lock = threading.Lock()

    def run(self) -> None:
        log("agent.starting", node=self.node_name, state_dir=self.state_dir, pvc_root=self.pvc_root,
            api=self.kube.host, bin_dir=self.bin_dir)
        stop_leftovers(self.state_dir / "processes.json", self.agent_id)
        cidr = ensure_local_range(self.args.pod_cidr)
        self.addresses = AddressPool(cidr)
        self.node = NodeHeartbeat(self.kube, self.node_name, cidr, self.args.register_with_taint, self.allocatable,
                                  self.host_ip)
        for attempt in range(30):  # the API server may still be starting
            try:
                self.node.register()
                break
            except Exception as e:  # noqa: BLE001
                if attempt == 29 or self.stopping.is_set():
                    raise
                log("node.register_failed", level="warning", node=self.node_name, error=str(e)[:300])
                time.sleep(1)
        self.node.start()
        if self.args.storage_class:
            provisioner = Provisioner(self.kube, self.node_name, self.pvc_root, self.args.storage_class, self.stopping)
            try:
                provisioner.ensure_class()
            except ApiError as e:
                log("storageclass.failed", level="warning", name=self.args.storage_class, error=str(e)[:300])
            provisioner.start()
        threading.Thread(target=self._watch_pods, name="pod watch", daemon=True).start()
        log("agent.ready", node=self.node_name, pod_cidr=cidr)
        while not self.stopping.wait(1):
            pass
        self.shutdown()

    # --------------------------------------------------------------------------------------------
    # Pods bound to this node

    def _watch_pods(self) -> None:
        selector = f"spec.nodeName={self.node_name}"
        first = True
        while not self.stopping.is_set():
            try:
                listing = self.kube.get("/api/v1/pods", fieldSelector=selector)
                pods = listing.get("items") or []
                if first:  # pods that ran under a previous agent keep their addresses
                    for pod in pods:
                        status = pod.get("status") or {}
                        ip, phase = status.get("podIP"), status.get("phase")
                        if ip and phase not in ("Succeeded", "Failed") and self.addresses.contains(ip):
                            self.addresses.allocate(pod["metadata"]["uid"], ip)
                    first = False
                live = {pod["metadata"]["uid"] for pod in pods}
                for pod in pods:
                    self._dispatch(pod)
                with self._lock:
                    vanished = [w for uid, w in self.workers.items() if uid not in live]
                for worker in vanished:
                    worker.remove()
                version = listing["metadata"]["resourceVersion"]
                while not self.stopping.is_set():
                    for event in self.kube.watch("/api/v1/pods", version, fieldSelector=selector):
                        obj = event["object"]
                        version = obj["metadata"].get("resourceVersion", version)
                        if event["type"] == "DELETED":
                            self._removed(obj)
                        elif event["type"] in ("ADDED", "MODIFIED"):
                            self._dispatch(obj)
                        if self.stopping.is_set():
                            return
            except ApiError as e:
                log("pods.relist", level="info" if e.status == 410 else "warning", reason=str(e)[:200])
                time.sleep(0.2 if e.status == 410 else 1)
            except Exception as e:  # noqa: BLE001 - connection trouble: list again
                if not self.stopping.is_set():
                    log("pods.watch_failed", level="warning", error=repr(e)[:300])
                    time.sleep(1)

    def _dispatch(self, pod: dict) -> None:
        uid = pod["metadata"]["uid"]
        with self._lock:
            for done in [u for u, w in self.workers.items() if w.finished]:
                del self.workers[done]
            worker = self.workers.get(uid)
            if worker is None:
                worker = self.workers[uid] = PodWorker(self, pod)
                worker.start()
                return
        worker.update(pod)

    def _removed(self, pod: dict) -> None:
        with self._lock:
            worker = self.workers.get(pod["metadata"]["uid"])
        if worker is not None:
            worker.update(pod)
            worker.remove()

    # --------------------------------------------------------------------------------------------
    # Stopping

    def shutdown(self) -> None:
        log("agent.stopping", node=self.node_name)
        pids = self.registry.close()
        for pid in pids.values():
            signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.args.shutdown_grace
        while time.monotonic() < deadline and any(alive(p) for p in pids.values()):
            time.sleep(0.05)
        for pid in pids.values():
            if alive(pid):
                signal_group(pid, signal.SIGKILL)
        kill_marked(self.agent_id, grace=1.0)
        self.registry.clear()
        self.node.stop()
        log("agent.stopped", node=self.node_name, processes=len(pids))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    agent = Agent(args)

    def stop(signum: int, _frame: object) -> None:
        log("agent.signal", signal=signal.Signals(signum).name)
        agent.stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    agent.run()


if __name__ == "__main__":
    main()
