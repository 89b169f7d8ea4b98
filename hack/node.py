"""The embedded cluster's real node: a kubelet and kube-proxy built from k8s.io/kubernetes, a containerd of
its own (Debian's containerd and runc), the CNI bridge plugin, kube-router's firewall for NetworkPolicies,
CoreDNS for the kube-dns Service and metrics-server for HPAs, all joined to hack/cluster.py's control plane
as host processes.

Pods run in containers from images that `hack/images.sh` builds and imports into this containerd (no
registry is reachable here). Addresses, all on this machine and routed nowhere else:

    NODE_IP      10.250.0.1/32 on bridge mlnode0: the node's InternalIP; the apiserver, kubelet, CoreDNS,
                 metrics-server and the demo's S3 server listen here, so pods reach them
    POD_CIDR     10.245.0.0/24 on bridge mlcni0 (gateway .1); pods have routes to the pod, service and
                 node addresses only, no default route
    SERVICE_CIDR 10.0.0.0/24 routed to mlcni0; kube-proxy (iptables) DNATs it; kube-dns is 10.0.0.10

Requires root (network namespaces, iptables, cgroups). Only the standard library: runs before the venv.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

NODE_NAME = "modelloop-node"
NODE_IP = "10.250.0.1"
NODE_BRIDGE = "mlnode0"
POD_BRIDGE = "mlcni0"
POD_CIDR = "10.245.0.0/24"
POD_GATEWAY = "10.245.0.1"
POD_SUPERNET = "10.245.0.0/16"
DNS_IP = "10.0.0.10"
CLUSTER_DOMAIN = "cluster.local"
KUBELET_PORT = 10250
# Persistent across `cluster down`: the image store (so a warm start imports nothing).
CONTAINERD_ROOT = Path(os.environ.get("MODELLOOP_CONTAINERD_ROOT", "/var/lib/modelloop/containerd"))
RUN_DIR = Path("/run/modelloop")
CONTAINERD_SOCKET = RUN_DIR / "containerd" / "containerd.sock"
KUBELET_ROOT = Path("/var/lib/modelloop/kubelet")
CNI_BIN = Path("/usr/lib/cni")


def sh(*argv: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), check=check, capture_output=True, text=True, input=input)


# ---------------------------------------------------------------------------------------------
# Certificates of the node's components (signed by the cluster CA that hack/cluster.py made)


def make_node_pki(pki: Path, openssl) -> None:
    """kubelet (client: system:node:<name>; serving: NODE_IP), the apiserver's client for kubelets,
    kube-proxy (system:kube-proxy, bound to system:node-proxier by the bootstrap RBAC policy), the
    aggregation layer's front-proxy client, and metrics-server's serving certificate."""
    (pki / "node-server.ext").write_text(f"subjectAltName=IP:{NODE_IP},DNS:{NODE_NAME}\nextendedKeyUsage=serverAuth\n")
    (pki / "metrics-server.ext").write_text(
        "subjectAltName=DNS:metrics-server.kube-system.svc,DNS:metrics-server.kube-system.svc.cluster.local,"
        f"IP:{NODE_IP}\nextendedKeyUsage=serverAuth\n")
    for name, subject, ext in (
            ("kubelet", f"/O=system:nodes/CN=system:node:{NODE_NAME}", "client.ext"),
            ("kubelet-serving", f"/CN={NODE_NAME}", "node-server.ext"),
            ("apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client", "client.ext"),
            ("kube-proxy", "/CN=system:kube-proxy", "client.ext"),
            ("front-proxy-client", "/CN=front-proxy-client", "client.ext"),
            ("metrics-server", "/CN=metrics-server", "metrics-server.ext")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", subject, cwd=pki)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.crt", "-days", "3650", "-extfile", ext, cwd=pki)


def apiserver_flags(pki: Path) -> list[str]:
    """What the apiserver needs to serve pods and talk to this node: a non-loopback address (pods reach
    the `kubernetes` Service through it), client certificates for kubelets, the aggregation layer."""
    return [
        f"--bind-address={NODE_IP}", f"--advertise-address={NODE_IP}",
        f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
        f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
        f"--kubelet-certificate-authority={pki / 'ca.crt'}",
        "--kubelet-preferred-address-types=InternalIP",
        f"--requestheader-client-ca-file={pki / 'ca.crt'}", "--requestheader-allowed-names=front-proxy-client",
        "--requestheader-username-headers=X-Remote-User", "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
        f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
        "--enable-aggregator-routing=true",
    ]


def kubeconfig_for(path: Path, pki: Path, server: str, cert: str) -> Path:
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "node",
        "clusters": [{"name": "modelloop", "cluster": {"server": server, "certificate-authority": str(pki / "ca.crt")}}],
        "users": [{"name": cert, "user": {"client-certificate": str(pki / f"{cert}.crt"),
                                          "client-key": str(pki / f"{cert}.key")}}],
        "contexts": [{"name": "node", "context": {"cluster": "modelloop", "user": cert}}],
    }, indent=2))
    path.chmod(0o600)
    return path


# ---------------------------------------------------------------------------------------------
# Network


def setup_network(service_cidr: str, blackholes: tuple[str, ...]) -> None:
    """The node address, the pod bridge (made here so the service route exists before the first pod),
    the service route, and unreachable routes for simulated pod ranges: kube-proxy programs Services whose
    endpoints are kwok's fake pod IPs, and that traffic must fail here instead of leaving the machine."""
    require_root()
    for bridge, addr in ((NODE_BRIDGE, f"{NODE_IP}/32"), (POD_BRIDGE, f"{POD_GATEWAY}/24")):
        if sh("ip", "link", "show", bridge, check=False).returncode != 0:
            sh("ip", "link", "add", bridge, "type", "bridge")
        if addr.split("/")[0] not in sh("ip", "-4", "addr", "show", bridge).stdout:
            sh("ip", "addr", "add", addr, "dev", bridge)
        sh("ip", "link", "set", bridge, "up")
    sh("ip", "route", "replace", service_cidr, "dev", POD_BRIDGE, "src", POD_GATEWAY)
    for cidr in (POD_SUPERNET, *blackholes):
        sh("ip", "route", "replace", "unreachable", cidr)
    if shutil.which("modprobe"):  # docker loads it too; without it bridged pod→service traffic skips kube-proxy
        sh("modprobe", "br_netfilter", check=False)
    for key, value in (("net/ipv4/ip_forward", "1"), ("net/bridge/bridge-nf-call-iptables", "1")):
        p = Path("/proc/sys") / key
        if p.exists() and p.read_text().strip() != value:
            p.write_text(value)


def write_cni_config(conf_dir: Path, ipam_dir: Path, service_cidr: str) -> None:
    conf_dir.mkdir(parents=True, exist_ok=True)
    (conf_dir / "10-modelloop.conflist").write_text(json.dumps({
        "cniVersion": "1.0.0", "name": "modelloop",
        "plugins": [
            {"type": "bridge", "bridge": POD_BRIDGE, "isGateway": True, "ipMasq": False, "hairpinMode": True,
             "ipam": {"type": "host-local", "dataDir": str(ipam_dir),
                      "ranges": [[{"subnet": POD_CIDR, "gateway": POD_GATEWAY}]],
                      # No default route: pods reach pods, Services and the node, nothing else.
                      "routes": [{"dst": service_cidr}, {"dst": f"{NODE_IP}/32"}]}},
            # Docker sets the FORWARD policy to DROP; this accepts traffic to and from pod addresses.
            {"type": "firewall", "backend": "iptables"},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }, indent=2))


def teardown_network(service_cidr: str, blackholes: tuple[str, ...]) -> None:
    for cidr in (service_cidr, POD_SUPERNET, *blackholes):
        sh("ip", "route", "del", cidr, check=False)
        sh("ip", "route", "del", "unreachable", cidr, check=False)
    for bridge in (POD_BRIDGE, NODE_BRIDGE):
        sh("ip", "link", "del", bridge, check=False)
    netns = Path("/run/netns")
    if netns.exists():
        for ns in netns.glob("cni-*"):
            sh("ip", "netns", "del", ns.name, check=False)
    for tool in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle"):
            rules = sh(f"{tool}-save", "-t", table, check=False).stdout
            ours = [line for line in rules.splitlines() if "KUBE-" in line or "CNI-" in line]
            if not ours:
                continue
            kept = [line for line in rules.splitlines()
                    if not ((line.startswith(":KUBE-") or line.startswith(":CNI-")) or
                            (line.startswith("-A") and ("KUBE-" in line or "CNI-" in line)))]
            sh(f"{tool}-restore", "-T", table, input="\n".join(kept) + "\n", check=False)
    # kube-router's ipsets (KUBE-SRC-*, KUBE-DST-*, kube-router-*), free now that no rule refers to them. Its
    # own `--cleanup-config` panics in v2.1.0, so the node cleans up after it.
    if shutil.which("ipset"):
        for name in sh("ipset", "list", "-n", check=False).stdout.split():
            if name.upper().startswith("KUBE-"):
                sh("ipset", "destroy", name, check=False)


# ---------------------------------------------------------------------------------------------
# containerd


def write_containerd_config(path: Path, pause_image: str, cni_conf: Path) -> None:
    path.write_text(f"""version = 2
root = "{CONTAINERD_ROOT}"
state = "{RUN_DIR / 'containerd'}"
[grpc]
  address = "{CONTAINERD_SOCKET}"
[ttrpc]
  address = "{CONTAINERD_SOCKET}.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause_image}"
  # This VM's capability bounding set lacks CAP_SYS_RESOURCE: without this every sandbox fails in runc.
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{cni_conf}"
""")


def ctr(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    return sh("ctr", "--address", str(CONTAINERD_SOCKET), "-n", "k8s.io", *args, check=check)


def remove_pod_containers() -> None:
    """Kill and delete every container of the node's containerd (pods outlive a killed kubelet)."""
    if not CONTAINERD_SOCKET.exists():
        return
    tasks = [line.split()[0] for line in ctr("tasks", "ls", "-q").stdout.splitlines() if line.strip()]
    for task in tasks:
        ctr("tasks", "kill", "-s", "SIGKILL", task)
    deadline = time.monotonic() + 10
    while tasks and time.monotonic() < deadline and ctr("tasks", "ls", "-q").stdout.strip():
        time.sleep(0.2)
    for task in tasks:
        ctr("tasks", "delete", "-f", task)
    for container in ctr("containers", "ls", "-q").stdout.split():
        ctr("containers", "delete", container)


# ---------------------------------------------------------------------------------------------
# kubelet, kube-proxy, CoreDNS, metrics-server configuration


def write_kubelet_config(path: Path, pki: Path, healthz_port: int, logs_dir: Path) -> None:
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "address": NODE_IP, "port": KUBELET_PORT, "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1", "healthzPort": healthz_port,
        "tlsCertFile": str(pki / "kubelet-serving.crt"), "tlsPrivateKeyFile": str(pki / "kubelet-serving.key"),
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(pki / "ca.crt")}},
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": f"unix://{CONTAINERD_SOCKET}",
        # containerd 1.6 has no CRI RuntimeConfig call; the host mounts cgroup v1 (hybrid).
        "cgroupDriver": "cgroupfs", "failCgroupV1": False, "failSwapOn": False,
        "clusterDNS": [DNS_IP], "clusterDomain": CLUSTER_DOMAIN, "resolvConf": "",
        # Images are imported by hand (no registry): never garbage-collect them.
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        # Absolute floors: shared machines have big disks that are nearly full, where 2% (5 GiB of 250) would
        # put the node under DiskPressure and evict the suite's pods.
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "512Mi", "imagefs.available": "512Mi"},
        "podLogsDir": str(logs_dir), "serializeImagePulls": False, "maxPods": 110,
        "nodeStatusReportFrequency": "10s", "nodeStatusUpdateFrequency": "5s",
        "syncFrequency": "10s", "fileCheckFrequency": "10s",
        "shutdownGracePeriod": "0s", "registerWithTaints": [],
    }
    path.write_text(json.dumps(config, indent=2))


def write_kube_proxy_config(path: Path, kubeconfig: Path, healthz_port: int, metrics_port: int) -> None:
    path.write_text(json.dumps({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)}, "mode": "iptables",
        "hostnameOverride": NODE_NAME, "clusterCIDR": POD_CIDR, "bindAddress": NODE_IP,
        "healthzBindAddress": f"127.0.0.1:{healthz_port}", "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        # No sysctl writes for conntrack, no route_localnet: NodePorts answer on the node address only.
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        "iptables": {"localhostNodePorts": False, "syncPeriod": "10s", "minSyncPeriod": "0s"},
        "nodePortAddresses": [f"{NODE_IP}/32"],
    }, indent=2))


def kube_router_argv(binary: Path, kubeconfig: Path, service_cidr: str, health_port: int) -> list[str]:
    """kube-router as a NetworkPolicy firewall only: it turns the policies of the pods on this node into
    iptables chains and ipsets. Routing (BGP), its service proxy and its CNI stay off: the bridge plugin
    and kube-proxy do those. Traffic from the node itself (kubelet probes, host processes) stays allowed,
    as with every NetworkPolicy implementation."""
    return [str(binary), f"--kubeconfig={kubeconfig}", f"--hostname-override={NODE_NAME}",
            "--run-firewall=true", "--run-router=false", "--run-service-proxy=false", "--enable-cni=false",
            "--enable-ipv4=true", "--enable-ipv6=false", f"--service-cluster-ip-range={service_cidr}",
            f"--health-port={health_port}", "--metrics-port=0", "--v=1"]


def write_corefile(path: Path, kubeconfig: Path, health_port: int) -> None:
    path.write_text(f""".:53 {{
    bind {NODE_IP}
    errors
    health 127.0.0.1:{health_port}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig} modelloop
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }}
    cache 5
}}
""")


def service_to_node(name: str, namespace: str, ports: list[dict], cluster_ip: str | None = None) -> list[dict]:
    """A selector-less Service with an EndpointSlice that points at a process on the node's address: how
    the in-cluster names kube-dns and metrics-server reach CoreDNS and metrics-server on the host."""
    svc = {"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/part-of": "modelloop-node"}},
           "spec": {"ports": [{k: p[k] for k in ("name", "port", "protocol")} | {"targetPort": p["targetPort"]}
                              for p in ports]}}
    if cluster_ip:
        svc["spec"]["clusterIP"] = cluster_ip
    eps = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": f"{name}-node", "namespace": namespace,
                        "labels": {"kubernetes.io/service-name": name,
                                   "endpointslice.kubernetes.io/managed-by": "node.modelloop.dev"}},
           "addressType": "IPv4",
           "endpoints": [{"addresses": [NODE_IP], "conditions": {"ready": True}, "nodeName": NODE_NAME}],
           "ports": [{"name": p["name"], "port": p["targetPort"], "protocol": p["protocol"]} for p in ports]}
    return [svc, eps]


def metrics_api_service(pki: Path) -> dict:
    import base64

    return {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
            "metadata": {"name": "v1beta1.metrics.k8s.io"},
            "spec": {"group": "metrics.k8s.io", "version": "v1beta1", "groupPriorityMinimum": 100,
                     "versionPriority": 100, "caBundle": base64.b64encode((pki / "ca.crt").read_bytes()).decode(),
                     "service": {"name": "metrics-server", "namespace": "kube-system", "port": 443}}}


def require_root() -> None:
    if os.geteuid() != 0:
        raise SystemExit("the embedded cluster's real node needs root (network namespaces, iptables, cgroups); "
                         "run as root, or set MODELLOOP_NODE=0 for a control plane with simulated nodes only")


def kill_pod_processes() -> None:
    """Kill every process in the kubelet's pod cgroups (cgroupfs driver: <controller>/kubepods/...): what a
    node of an earlier cluster left running when its kubelet and containerd were killed."""
    root = Path("/sys/fs/cgroup")
    for procs in root.glob("*/kubepods*/**/cgroup.procs"):
        try:
            pids = procs.read_text().split()
        except OSError:
            continue
        for pid in pids:
            try:
                os.kill(int(pid), 9)
            except (OSError, ValueError):
                pass


def reset_host(service_cidr: str, blackholes: tuple[str, ...]) -> None:
    """Start from a clean machine: pods, network and kubelet state of an earlier node (a killed session, a
    crashed `up`) are removed. One real node per machine: this also ends another checkout's node."""
    kill_pod_processes()
    teardown_network(service_cidr, blackholes)
    cleanup_dirs()


def cleanup_dirs() -> None:
    """The kubelet's root (its pod volume mounts first) and the runtime state; the image store stays."""
    if KUBELET_ROOT.exists():
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
                  if line.split()[1].startswith(str(KUBELET_ROOT))]
        for m in sorted(mounts, key=len, reverse=True):
            sh("umount", "-l", m, check=False)
        shutil.rmtree(KUBELET_ROOT, ignore_errors=True)
    shutil.rmtree(RUN_DIR, ignore_errors=True)
    for link in Path("/var/log/containers").glob("*.log") if Path("/var/log/containers").exists() else ():
        if not link.exists():  # dangling: its pod's log directory went with the cluster
            link.unlink(missing_ok=True)
