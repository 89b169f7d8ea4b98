#!/usr/bin/env python3
"""The embedded Kubernetes cluster: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok (two
simulated nodes, tainted, for fast controller tests) and one real node (hack/node.py: kubelet, kube-proxy,
containerd, CNI bridge, kube-router's NetworkPolicy firewall, CoreDNS, metrics-server), all real binaries built from their Go modules by
hack/build-binaries.sh, run as host processes. Pods on the real node run in containers from the images
hack/images.sh builds. MODELLOOP_NODE=0 starts the control plane and kwok only (no root needed), on 127.0.0.1.

    hack/cluster.py up       start (or reuse a healthy) cluster; kubeconfig in .cluster/kubeconfig
    hack/cluster.py down     stop every process it started and remove its state
    hack/cluster.py status   exit 0 when the recorded cluster is healthy
    hack/cluster.py images   rebuild changed images and import them into the running node (JSON on stdout)

State lives in $MODELLOOP_CLUSTER_DIR (default .cluster/): pki/, data/, logs/, state.json, kubeconfig.
Only the standard library is used, so this runs before the venv exists.
"""
from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import shutil
import signal
import socket
import select
import ssl
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import node  # noqa: E402  (hack/node.py)

ROOT = Path(__file__).resolve().parent.parent
HACK = ROOT / "hack"
STATE_DIR = Path(os.environ.get("MODELLOOP_CLUSTER_DIR", ROOT / ".cluster")).resolve()
CACHE = Path(os.environ.get("MODELLOOP_CACHE", Path.home() / ".cache" / "modelloop"))
BIN = CACHE / "bin"
SERVICE_CIDR = "10.0.0.0/24"
# Without the real node nothing routes Service addresses: the range can hold more than 254 Services
# (bench/operator creates 500). It contains SERVICE_CIDR, so 10.0.0.1 stays the `kubernetes` Service.
WIDE_SERVICE_CIDR = "10.0.0.0/16"
KWOK_POD_CIDR = "10.244.0.0/16"
KWOK_NODES = ("kwok-node-0", "kwok-node-1")
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
READY_TIMEOUT_S = 120
# The real node uses fixed host resources (/var/lib/modelloop, the mlnode0/mlcni0 bridges, iptables chains), so one
# cluster with a real node runs on a machine at a time, whichever checkout started it: a holder process keeps an
# exclusive lock on NODE_LOCK for the cluster's life, and a second `up` waits (at most NODE_WAIT_S) for it.
NODE_LOCK = Path(os.environ.get("MODELLOOP_NODE_LOCK", "/run/lock/modelloop-node.lock"))
NODE_WAIT_S = float(os.environ.get("MODELLOOP_NODE_WAIT_S", "3600"))


def with_node() -> bool:
    return os.environ.get("MODELLOOP_NODE", "1") != "0"


def log(msg: str) -> None:
    print(f"[cluster] {msg}", file=sys.stderr, flush=True)


def versions() -> dict[str, str]:
    out = {}
    for line in (HACK / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            out[key] = value
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# Certificates


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(pki: Path) -> None:
    pki.mkdir(parents=True, exist_ok=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
            "-days", "3650", "-subj", "/CN=modelloop-local-ca", cwd=pki)
    sans = (f"subjectAltName=IP:127.0.0.1,IP:10.0.0.1,IP:{node.NODE_IP},DNS:localhost,DNS:kubernetes,"
            "DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local")
    (pki / "server.ext").write_text(sans + "\nextendedKeyUsage=serverAuth\n")
    (pki / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, subject, ext in (("apiserver", "/CN=kube-apiserver", "server.ext"),
                               ("admin", "/O=system:masters/CN=modelloop-admin", "client.ext")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", subject, cwd=pki)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.crt", "-days", "3650", "-extfile", ext, cwd=pki)
    openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
    node.make_node_pki(pki, openssl)


def write_kubeconfig(path: Path, pki: Path, server: str) -> None:
    def b64(name: str) -> str:
        return base64.b64encode((pki / name).read_bytes()).decode()

    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "modelloop",
        "clusters": [{"name": "modelloop", "cluster": {"server": server, "certificate-authority-data": b64("ca.crt")}}],
        "users": [{"name": "admin", "user": {"client-certificate-data": b64("admin.crt"), "client-key-data": b64("admin.key")}}],
        "contexts": [{"name": "modelloop", "context": {"cluster": "modelloop", "user": "admin", "namespace": "default"}}],
    }, indent=2))
    path.chmod(0o600)


# ---------------------------------------------------------------------------------------------
# kwok stages: the upstream stage files, with two changes so tests can drive outcomes on demand


def kwok_stages(version: str, out: Path) -> None:
    """Write the kwok stages we use to one multi-document file.

    Upstream's fast pod-complete stage races the chaos failure stage for pods that should fail, so
    pod-complete skips pods labelled for failure, and pods annotated `pod-complete.stage.kwok.x-k8s.io/hold`
    so a test can keep a Job running until it removes the annotation (kwok's own delay is no use here: a
    pod whose completion is delayed is not deleted before the delay ends, so its namespace stays Terminating).
    """
    src = CACHE / f"kwok-stages-{version}"
    files = ["node/fast/node-initialize.yaml", "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
             "pod/fast/pod-ready.yaml", "pod/fast/pod-complete.yaml", "pod/fast/pod-delete.yaml",
             "pod/chaos/pod-container-running-failed.yaml"]
    docs = []
    for f in files:
        text = (src / f).read_text()
        if f.endswith("pod-complete.yaml"):
            anchor = "    matchExpressions:\n"
            text = text.replace(anchor, anchor + (
                "    - key: '.metadata.labels[\"pod-container-running-failed.stage.kwok.x-k8s.io\"]'\n"
                "      operator: 'DoesNotExist'\n"
                "    - key: '.metadata.annotations[\"pod-complete.stage.kwok.x-k8s.io/hold\"]'\n"
                "      operator: 'DoesNotExist'\n"), 1)
        if f.endswith("pod-delete.yaml") and "finalizers:" not in text:
            # A Job's pods carry its tracking finalizer until the Job controller has counted them; a pod
            # deleted while it runs (a held one, when its namespace goes) is never counted: drop it as a
            # kubelet's pod deletion ends with the pod gone.
            text = text.replace("  next:\n", "  next:\n    finalizers:\n      empty: true\n", 1)
        docs.append(text.strip())
    out.write_text("\n---\n".join(docs) + "\n")


# ---------------------------------------------------------------------------------------------
# Processes


def start(name: str, argv: list[str], logs: Path) -> int:
    logf = open(logs / f"{name}.log", "ab")
    proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, cwd=STATE_DIR)
    return proc.pid


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (all its threads) so far (the benchmarks' CPU figures)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop_pids(pids: dict[str, int], grace: float = 10.0) -> None:
    for pid in pids.values():
        try:
            os.killpg(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(p) for p in pids.values()):
        time.sleep(0.1)
    for pid in pids.values():
        if alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class StartError(RuntimeError):
    pass


def wait_http(name: str, url: str, pid: int, logs: Path, context: ssl.SSLContext | None = None,
              timeout: float = READY_TIMEOUT_S, expect: bytes | None = b"ok") -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not alive(pid):
            raise StartError(f"{name} exited during start-up; last lines of {logs / (name + '.log')}:\n"
                             f"{tail(logs / (name + '.log'))}")
        try:
            with urllib.request.urlopen(url, context=context, timeout=2) as r:
                body = r.read()
                if r.status == 200 and (expect is None or expect in body):
                    return
                last = f"HTTP {r.status} {body[:200]!r}"
        except Exception as e:  # noqa: BLE001 - any failure means "not yet"
            last = str(e)
        time.sleep(0.3)
    raise StartError(f"{name} not healthy at {url} after {timeout:.0f}s ({last}); last lines of its log:\n"
                     f"{tail(logs / (name + '.log'))}")


def client_context(pki: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    return ctx


def kubectl(*args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(BIN / "kubectl"), "--kubeconfig", str(STATE_DIR / "kubeconfig"), *args],
                          input=input, text=True, capture_output=True)
    if check and proc.returncode != 0:
        raise StartError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


# ---------------------------------------------------------------------------------------------
# State


def read_state() -> dict | None:
    try:
        return json.loads((STATE_DIR / "state.json").read_text())
    except (OSError, ValueError):
        return None


def healthy(state: dict | None) -> bool:
    if not state or not all(alive(p) for p in state["pids"].values()):
        return False
    try:
        url = f"https://{state.get('host', '127.0.0.1')}:{state['ports']['apiserver']}/readyz"
        with urllib.request.urlopen(url, context=client_context(STATE_DIR / "pki"), timeout=3) as r:
            return r.status == 200
    except Exception:  # noqa: BLE001
        return False


@contextmanager
def locked():
    STATE_DIR.parent.mkdir(parents=True, exist_ok=True)
    lock_path = STATE_DIR.parent / (STATE_DIR.name + ".lock")
    with open(lock_path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def hold_node() -> subprocess.Popen:
    """Take the machine's real node for this cluster: a process that holds NODE_LOCK until `down` stops it (or the
    machine restarts). Waits while another checkout's cluster holds it; fails after NODE_WAIT_S. The holder keeps the
    lock only once told `keep` (after the state naming it is saved): should `up` die before that, the holder's pipes
    close and it lets go, instead of holding the node for a cluster nobody can stop."""
    NODE_LOCK.parent.mkdir(parents=True, exist_ok=True)
    owner = NODE_LOCK.with_name(NODE_LOCK.name + ".owner")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time\n"
         "fh = open(sys.argv[1], 'a')\nfcntl.flock(fh, fcntl.LOCK_EX)\nprint('held', flush=True)\n"
         "if sys.stdin.readline().strip() != 'keep': sys.exit(0)\n"
         "while True: time.sleep(3600)", str(NODE_LOCK)],
        stdout=subprocess.PIPE, stdin=subprocess.PIPE, start_new_session=True)
    started, announced = time.monotonic(), False
    while True:
        ready, _, _ = select.select([holder.stdout], [], [], 2.0)
        if ready and holder.stdout.readline().strip() == b"held":
            break
        if holder.poll() is not None:
            raise StartError(f"could not lock {NODE_LOCK}")
        other = owner.read_text().strip() if owner.exists() else "another checkout"
        if time.monotonic() - started > NODE_WAIT_S:
            stop_pids({"node-lock": holder.pid})
            raise StartError(f"the real node is still held by the cluster of {other} after {NODE_WAIT_S:.0f}s; "
                             f"`make cluster-down` there frees it")
        if not announced:
            log(f"waiting for the real node, held by the cluster of {other} (`make cluster-down` there frees it)")
            announced = True
    holder.stdout.close()
    owner.write_text(str(STATE_DIR))
    return holder


def keep_node(holder: subprocess.Popen | None) -> None:
    """Tell the node's lock holder to keep the lock: the state that names it is saved."""
    if holder is not None and holder.stdin and not holder.stdin.closed:
        holder.stdin.write(b"keep\n")
        holder.stdin.close()


def down() -> None:
    state = read_state()
    if state:
        pids = dict(state["pids"])
        if "kubelet" in pids:  # the kubelet first, so that it restarts no pod while they are removed
            stop_pids({"kubelet": pids.pop("kubelet")})
            node.remove_pod_containers()
        lock = pids.pop("node-lock", None)
        stop_pids(pids)
        log(f"stopped {', '.join(state['pids'])}")
        if state.get("node"):
            node.teardown_network(SERVICE_CIDR, (KWOK_POD_CIDR,))
            node.cleanup_dirs()
        if lock:  # last: the node is free for another checkout once its state is gone
            stop_pids({"node-lock": lock})
    # Servers other tools started for this cluster (the demo's operator and S3 server).
    extra = STATE_DIR / "extra-pids.json"
    if extra.exists():
        try:
            stop_pids({k: int(v) for k, v in json.loads(extra.read_text()).items()}, grace=5)
        except (ValueError, TypeError):
            pass
    shutil.rmtree(STATE_DIR, ignore_errors=True)


def register_extra(name: str, pid: int) -> None:
    """Record a process that `down` must stop with the cluster."""
    extra = STATE_DIR / "extra-pids.json"
    pids = json.loads(extra.read_text()) if extra.exists() else {}
    pids[name] = pid
    extra.write_text(json.dumps(pids, indent=2))


def build_binaries() -> None:
    sets = ["control-plane", "node"] if with_node() else ["control-plane"]  # hack/build-binaries.sh names them
    subprocess.run([str(HACK / "build-binaries.sh"), *sets], check=True, stdout=subprocess.DEVNULL)


def images(containerd_socket: Path | None = None) -> dict[str, str]:
    """Build (or reuse) modelloop's images; with a socket, also import them into that containerd."""
    env = {**os.environ}
    if containerd_socket:
        env["MODELLOOP_CONTAINERD_SOCKET"] = str(containerd_socket)
    proc = subprocess.run([str(HACK / "images.sh")], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise StartError(f"hack/images.sh failed:\n{proc.stderr[-4000:]}")
    return dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)


def up() -> dict:
    state = read_state()
    if healthy(state):
        log("a healthy cluster is already running; reusing it")
        return state
    if state or STATE_DIR.exists():
        log("recorded cluster is not healthy; cleaning it up")
        down()
    build_binaries()
    real_node = with_node()
    pids: dict[str, int] = {}
    holder = None
    if real_node:
        node.require_root()
        built = images()  # before anything starts: a cold build takes minutes
        try:
            holder = hold_node()
            pids["node-lock"] = holder.pid
        except StartError as e:
            log(str(e))
            raise SystemExit(1)
    try:
        if real_node:
            node.reset_host(SERVICE_CIDR, (KWOK_POD_CIDR,))
        v = versions()
        pki, data, logs = STATE_DIR / "pki", STATE_DIR / "data", STATE_DIR / "logs"
        for d in (pki, data, logs):
            d.mkdir(parents=True, exist_ok=True)
        make_pki(pki)
        host = node.NODE_IP if real_node else "127.0.0.1"
        ports = {n: free_port() for n in ("etcd", "etcd_peer", "apiserver", "kcm", "scheduler", "kwok", "kubelet_healthz",
                                          "proxy_healthz", "proxy_metrics", "router_health", "dns_health",
                                          "metrics_server")}
        kubeconfig = STATE_DIR / "kubeconfig"
        server = f"https://{host}:{ports['apiserver']}"
        write_kubeconfig(kubeconfig, pki, server)
        state = {"pids": pids, "ports": ports, "versions": v, "kubeconfig": str(kubeconfig), "host": host,
                 "bin": str(BIN), "started": time.time(), "node": real_node}

        def save() -> None:
            (STATE_DIR / "state.json").write_text(json.dumps(state, indent=2))
            keep_node(holder)

        if real_node:
            node.setup_network(SERVICE_CIDR, (KWOK_POD_CIDR,))
        etcd_url = f"http://127.0.0.1:{ports['etcd']}"
        peer_url = f"http://127.0.0.1:{ports['etcd_peer']}"
        pids["etcd"] = start("etcd", [
            str(BIN / "etcd"), "--name=modelloop", f"--data-dir={data / 'etcd'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=modelloop={peer_url}", "--unsafe-no-fsync", "--log-level=warn",
        ], logs)
        save()
        wait_http("etcd", f"{etcd_url}/health", pids["etcd"], logs, expect=b'"health":"true"')

        addresses = node.apiserver_flags(pki) if real_node else ["--bind-address=127.0.0.1",
                                                                  "--advertise-address=127.0.0.1"]
        # Every request of a ServiceAccount (the operator's, in the tests) is audited: the RBAC test compares
        # the chart's rules with the calls the operator really made.
        (STATE_DIR / "audit-policy.json").write_text(json.dumps({
            "apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"],
            "rules": [{"level": "Metadata", "userGroups": ["system:serviceaccounts"]}, {"level": "None"}]}))
        pids["kube-apiserver"] = start("kube-apiserver", [
            str(BIN / "kube-apiserver"), f"--etcd-servers={etcd_url}", *addresses, f"--secure-port={ports['apiserver']}",
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR if real_node else WIDE_SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            "--allow-privileged=true", "--profiling=false", "--v=1",
            f"--audit-policy-file={STATE_DIR / 'audit-policy.json'}", f"--audit-log-path={logs / 'audit.log'}",
            "--audit-log-format=json", "--audit-log-maxsize=200",
        ], logs)
        save()
        ctx = client_context(pki)
        wait_http("kube-apiserver", f"{server}/readyz", pids["kube-apiserver"], logs, context=ctx)

        auth = [f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}", "--leader-elect=false", "--bind-address=127.0.0.1"]
        pids["kube-controller-manager"] = start("kube-controller-manager", [
            str(BIN / "kube-controller-manager"), *auth, f"--secure-port={ports['kcm']}", "--controllers=*",
            f"--service-account-private-key-file={pki / 'sa.key'}", f"--root-ca-file={pki / 'ca.crt'}",
            "--use-service-account-credentials=false", f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}", "--profiling=false", "--v=1",
            # HPAs that settle within a test or a demo: a scale-down window of 15 s (default 5 min) and a
            # sync every 5 s (default 15 s).
            "--horizontal-pod-autoscaler-downscale-stabilization=15s",
            "--horizontal-pod-autoscaler-sync-period=5s",
        ], logs)
        pids["kube-scheduler"] = start("kube-scheduler", [
            str(BIN / "kube-scheduler"), *auth, f"--secure-port={ports['scheduler']}", "--profiling=false",
        ], logs)
        stages = STATE_DIR / "kwok-stages.yaml"
        kwok_stages(v["KWOK_VERSION"], stages)
        pids["kwok"] = start("kwok", [
            str(BIN / "kwok"), f"--kubeconfig={kubeconfig}", f"--config={stages}",
            f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake",
            f"--server-address=127.0.0.1:{ports['kwok']}", f"--cidr={KWOK_POD_CIDR}",
            "--node-lease-duration-seconds=40",
        ], logs)
        save()
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE  # self-signed serving certs of kcm/scheduler, loopback only
        wait_http("kube-controller-manager", f"https://127.0.0.1:{ports['kcm']}/healthz",
                  pids["kube-controller-manager"], logs, context=insecure)
        wait_http("kube-scheduler", f"https://127.0.0.1:{ports['scheduler']}/healthz",
                  pids["kube-scheduler"], logs, context=insecure)
        wait_http("kwok", f"http://127.0.0.1:{ports['kwok']}/healthz", pids["kwok"], logs)
        create_kwok_nodes()
        wait_default_service_account(pids, logs)
        if real_node:
            state["images"] = start_node(built, pki, server, ports, pids, logs, save)
            save()
    except StartError as e:
        log(str(e))
        stop_pids(pids)
        raise SystemExit(1)
    except BaseException:
        stop_pids(pids)
        raise
    return state


def start_node(built: dict[str, str], pki: Path, server: str, ports: dict[str, int], pids: dict[str, int],
               logs: Path, save) -> dict[str, str]:
    """containerd (with the images imported), kubelet, kube-proxy, kube-router (NetworkPolicies), CoreDNS and
    metrics-server."""
    nd = STATE_DIR / "node"
    nd.mkdir(parents=True, exist_ok=True)
    node.write_cni_config(nd / "cni", nd / "ipam", SERVICE_CIDR)
    node.write_containerd_config(nd / "containerd.toml", built["PAUSE_IMAGE"], nd / "cni")
    node.RUN_DIR.mkdir(parents=True, exist_ok=True)
    pids["containerd"] = start("containerd", ["containerd", f"--config={nd / 'containerd.toml'}"], logs)
    save()
    deadline = time.monotonic() + 30
    while not node.CONTAINERD_SOCKET.exists():
        if time.monotonic() > deadline or not alive(pids["containerd"]):
            raise StartError(f"containerd did not start:\n{tail(logs / 'containerd.log')}")
        time.sleep(0.2)
    node.remove_pod_containers()  # containers an earlier node left in the image store's metadata
    built = images(node.CONTAINERD_SOCKET)

    node.write_kubelet_config(nd / "kubelet.json", pki, ports["kubelet_healthz"], nd / "pod-logs")
    pids["kubelet"] = start("kubelet", [
        str(BIN / "kubelet"), f"--config={nd / 'kubelet.json'}",
        f"--kubeconfig={node.kubeconfig_for(nd / 'kubelet.kubeconfig', pki, server, 'kubelet')}",
        f"--root-dir={node.KUBELET_ROOT}", f"--node-ip={node.NODE_IP}", f"--hostname-override={node.NODE_NAME}",
        "--node-labels=modelloop.dev/node=real", "--v=1",
    ], logs)
    save()
    node.write_kube_proxy_config(nd / "kube-proxy.json", node.kubeconfig_for(nd / "kube-proxy.kubeconfig", pki, server,
                                                                              "kube-proxy"),
                                 ports["proxy_healthz"], ports["proxy_metrics"])
    pids["kube-proxy"] = start("kube-proxy", [str(BIN / "kube-proxy"), f"--config={nd / 'kube-proxy.json'}", "--v=1"],
                               logs)
    save()
    wait_node_ready(node.NODE_NAME, pids["kubelet"], logs)
    wait_http("kube-proxy", f"http://127.0.0.1:{ports['proxy_healthz']}/healthz", pids["kube-proxy"], logs,
              expect=None)

    # Infrastructure processes on the host use the admin credentials, like kube-controller-manager here.
    kubeconfig = STATE_DIR / "kubeconfig"
    # NetworkPolicies are enforced (the sketch port of every server is the operator's only): kube-router reads
    # its Node, which exists once the kubelet is Ready.
    pids["kube-router"] = start("kube-router", node.kube_router_argv(BIN / "kube-router", kubeconfig, SERVICE_CIDR,
                                                                     ports["router_health"]), logs)
    save()
    wait_http("kube-router", f"http://127.0.0.1:{ports['router_health']}/healthz", pids["kube-router"], logs,
              expect=None)
    node.write_corefile(nd / "Corefile", kubeconfig, ports["dns_health"])
    pids["coredns"] = start("coredns", [str(BIN / "coredns"), "-conf", str(nd / "Corefile")], logs)
    save()
    for obj in node.service_to_node("kube-dns", "kube-system", [
            {"name": "dns", "port": 53, "targetPort": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 53, "targetPort": 53, "protocol": "TCP"}], cluster_ip=node.DNS_IP):
        kubectl("apply", "--server-side", "-f", "-", input=json.dumps(obj))
    wait_http("coredns", f"http://127.0.0.1:{ports['dns_health']}/health", pids["coredns"], logs, expect=b"OK")

    pids["metrics-server"] = start("metrics-server", [
        str(BIN / "metrics-server"), f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}", f"--bind-address={node.NODE_IP}",
        f"--secure-port={ports['metrics_server']}", f"--tls-cert-file={pki / 'metrics-server.crt'}",
        f"--tls-private-key-file={pki / 'metrics-server.key'}",
        f"--kubelet-certificate-authority={pki / 'ca.crt'}", "--kubelet-preferred-address-types=InternalIP",
        "--metric-resolution=10s", "--kubelet-request-timeout=5s",  # 10 s: the shortest metrics-server allows
    ], logs)
    save()
    for obj in [*node.service_to_node("metrics-server", "kube-system", [
            {"name": "https", "port": 443, "targetPort": ports["metrics_server"], "protocol": "TCP"}]),
                node.metrics_api_service(pki)]:
        kubectl("apply", "--server-side", "-f", "-", input=json.dumps(obj))
    wait_api_service("v1beta1.metrics.k8s.io", pids["metrics-server"], logs)
    return built


def wait_api_service(name: str, pid: int, logs: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            raise StartError(f"metrics-server exited; last lines of its log:\n{tail(logs / 'metrics-server.log')}")
        out = kubectl("get", "apiservice", name, "-o",
                      "jsonpath={.status.conditions[?(@.type=='Available')].status}", check=False).stdout.strip()
        if out == "True":
            return
        time.sleep(0.5)
    raise StartError(f"APIService {name} not Available after {timeout:.0f}s:\n{tail(logs / 'metrics-server.log')}")


def create_kwok_nodes(names: tuple[str, ...] = KWOK_NODES) -> None:
    """Simulated nodes (kwok) of 110 pods each; a benchmark adds more for more pods."""
    for name in names:
        node = {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
                         "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                    "kubernetes.io/arch": "amd64", "type": "kwok"}},
            # Tainted so that only pods which ask for simulation land here; modelloop's real pods go
            # to the real node, which runs them in containers.
            "spec": {"taints": [{"key": KWOK_ANNOTATION, "value": "fake", "effect": "NoSchedule"}]},
            "status": {"allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"},
                       "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"}},
        }
        kubectl("apply", "-f", "-", input=json.dumps(node))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        out = kubectl("get", "nodes", *names, "-o",
                      "jsonpath={range .items[*]}{.status.conditions[?(@.type=='Ready')].status}{'\\n'}{end}",
                      check=False).stdout.split()
        if len(out) == len(names) and all(s == "True" for s in out):
            return
        time.sleep(0.3)
    raise StartError("kwok nodes did not become Ready within 60s; see .cluster/logs/kwok.log:\n"
                     + tail(STATE_DIR / "logs" / "kwok.log"))


def wait_node_ready(name: str, pid: int, logs: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            raise StartError(f"the kubelet exited; last lines of its log:\n{tail(logs / 'kubelet.log')}")
        out = kubectl("get", "node", name, "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
                      check=False).stdout.strip()
        if out == "True":
            return
        time.sleep(0.3)
    raise StartError(f"node {name} not Ready after {timeout:.0f}s; last lines of the kubelet's log:\n"
                     f"{tail(logs / 'kubelet.log')}")


def wait_default_service_account(pids: dict[str, int], logs: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not alive(pids["kube-controller-manager"]):
            raise StartError("kube-controller-manager exited; last lines of its log:\n"
                             + tail(logs / "kube-controller-manager.log"))
        if kubectl("get", "serviceaccount", "default", "-n", "default", check=False).returncode == 0:
            return
        time.sleep(0.3)
    raise StartError("the default service account did not appear within 60s (kube-controller-manager log):\n"
                     + tail(logs / "kube-controller-manager.log"))


def helm_install(release: str, namespace: str, values_file: Path, timeout: str = "5m") -> None:
    """`helm upgrade --install` of charts/modelloop, waiting for the operator to be ready. A release left
    pending by an interrupted helm (a killed demo or test run) is first rolled back, or removed if it never
    deployed, instead of failing with "another operation is in progress"."""
    helm = [str(BIN / "helm"), "--kubeconfig", str(STATE_DIR / "kubeconfig"), "-n", namespace]
    status = subprocess.run([*helm, "status", release, "-o", "json"], capture_output=True, text=True)
    if status.returncode == 0 and json.loads(status.stdout)["info"]["status"].startswith("pending"):
        history = subprocess.run([*helm, "history", release, "-o", "json"], capture_output=True, text=True)
        deployed = [h for h in json.loads(history.stdout or "[]") if h["status"] in ("deployed", "superseded")]
        fix = ["rollback", release, str(deployed[-1]["revision"])] if deployed else ["uninstall", release]
        log(f"helm release {namespace}/{release} was left pending; {fix[0]}")
        subprocess.run([*helm, *fix, "--wait"], capture_output=True, text=True)
    proc = subprocess.run([*helm, "upgrade", "--install", release, str(ROOT / "charts" / "modelloop"),
                           "-f", str(values_file), "--wait", "--timeout", timeout], capture_output=True, text=True)
    if proc.returncode != 0:
        raise StartError(f"helm upgrade --install {release} failed: {proc.stderr.strip()}")


def describe(state: dict) -> str:
    v = state["versions"]
    lines = [f"cluster ready: Kubernetes {v['K8S_VERSION']}, etcd {v['ETCD_VERSION']}, kwok {v['KWOK_VERSION']} "
             f"on https://{state.get('host', '127.0.0.1')}:{state['ports']['apiserver']}"]
    if state.get("node"):
        lines.append(f"  real node {node.NODE_NAME} ({node.NODE_IP}): kubelet, kube-proxy, containerd, kube-router "
                     f"(NetworkPolicies), CoreDNS (kube-dns {node.DNS_IP}), metrics-server; images: "
                     + ", ".join(state.get("images", {}).get(k, "?") for k in ("OPERATOR_IMAGE", "RUNTIME_IMAGE")))
    lines += [f"  binaries (kubectl, helm of matching versions): {state['bin']}",
              f"  logs: {STATE_DIR / 'logs'}",
              "  point a shell at it:",
              f"    export KUBECONFIG={state['kubeconfig']} PATH={state['bin']}:$PATH",
              "    kubectl get nodes -o wide"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down", "status", "images"])
    args = parser.parse_args()
    with locked():
        if args.command == "up":
            started = time.monotonic()
            state = up()
            print(describe(state))
            log(f"up in {time.monotonic() - started:.1f}s")
        elif args.command == "down":
            down()
        elif args.command == "images":  # rebuild what changed and import it into the running node
            state = read_state()
            if not (healthy(state) and state.get("node")):
                raise SystemExit("no healthy cluster with a real node is running; `make cluster` starts one")
            try:
                state["images"] = images(node.CONTAINERD_SOCKET)
            except StartError as e:
                raise SystemExit(str(e))
            (STATE_DIR / "state.json").write_text(json.dumps(state, indent=2))
            print(json.dumps(state["images"], indent=2))
        else:
            state = read_state()
            ok = healthy(state)
            print("healthy" if ok else "not running")
            raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
