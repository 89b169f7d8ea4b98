"""The embedded cluster's real node: a kubelet and kube-proxy v1.36 on containerd, pods in containers of the
images built here, Services and DNS names that work from pods and from the host, resource metrics."""
from __future__ import annotations

import json

import httpx
import pytest

from hack.traffic import resolve
from tests.fixtures.cluster import RESTRICTED_CONTAINER, RESTRICTED_POD, wait_for

pytestmark = pytest.mark.node
NODE = "modelloop-node"
# A tiny HTTP server that answers with its pod's name (python3 of the runtime image, no files written).
ECHO = ("import http.server, os\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        body = os.environ['POD'].encode()\n"
        "        self.send_response(200); self.send_header('Content-Length', str(len(body))); self.end_headers()\n"
        "        self.wfile.write(body)\n"
        "http.server.ThreadingHTTPServer(('', 8080), H).serve_forever()\n")


def test_the_real_node_is_ready_with_kubelet_136_on_containerd(cluster):
    node = cluster.get("node", NODE)
    info = node["status"]["nodeInfo"]
    assert info["kubeletVersion"].startswith("v1.36."), info
    assert info["containerRuntimeVersion"].startswith("containerd://"), info
    ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True", ready
    assert {"type": "InternalIP", "address": cluster.host} in node["status"]["addresses"]
    print(cluster.kubectl("get", "nodes", "-o", "wide").stdout)


@pytest.fixture()
def echo(cluster, namespace):
    """Two pods of an echo server behind the Service `echo`, running the runtime image."""
    image = cluster.images()["RUNTIME_IMAGE"]
    cluster.apply({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "echo", "namespace": namespace},
                   "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "echo"}},
                            "template": {"metadata": {"labels": {"app": "echo"}}, "spec": {
                                "securityContext": RESTRICTED_POD, "automountServiceAccountToken": False,
                                "containers": [{"name": "echo", "image": image, "imagePullPolicy": "IfNotPresent",
                                                "command": ["python3", "-c", ECHO],
                                                "env": [{"name": "POD", "valueFrom": {"fieldRef": {
                                                    "fieldPath": "metadata.name"}}}],
                                                "ports": [{"containerPort": 8080}],
                                                "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
                                                "securityContext": RESTRICTED_CONTAINER}]}}}})
    cluster.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo", "namespace": namespace},
                   "spec": {"selector": {"app": "echo"}, "ports": [{"port": 80, "targetPort": 8080}]}})
    cluster.kubectl("rollout", "status", "deployment/echo", "-n", namespace, "--timeout=120s")
    return image


def get(url: str) -> str | None:
    try:
        return httpx.get(url, headers={"connection": "close"}, timeout=5).text
    except httpx.HTTPError:
        return None


def test_service_name_resolves_and_answers_from_the_host_through_kube_proxy(cluster, namespace, echo):
    address = resolve("echo", namespace)
    assert address == cluster.get("service", "echo", "-n", namespace)["spec"]["clusterIP"]
    # kube-proxy programs the Service's rules shortly after its endpoints are ready: wait for that once.
    wait_for(lambda: get(f"http://{address}/"), timeout=30, message="kube-proxy to route the Service")
    answered = {httpx.get(f"http://{address}/", headers={"connection": "close"}, timeout=5).text for _ in range(40)}
    pods = {p["metadata"]["name"] for p in cluster.get("pods", "-n", namespace, "-l", "app=echo")["items"]}
    assert answered == pods  # kube-proxy spread 40 connections over both pods


def test_service_name_resolves_and_answers_from_a_pod(cluster, namespace, echo):
    probe = ("import urllib.request, socket, time\n"
             f"print(socket.gethostbyname('echo.{namespace}.svc.cluster.local'))\n"
             "for attempt in range(30):  # until kube-proxy has programmed the new Service\n"
             "    try:\n"
             "        print(urllib.request.urlopen('http://echo/', timeout=5).read().decode()); break\n"
             "    except OSError:\n"
             "        time.sleep(1)\n")
    cluster.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client", "namespace": namespace},
                   "spec": {"restartPolicy": "Never", "securityContext": RESTRICTED_POD,
                            "automountServiceAccountToken": False,
                            "containers": [{"name": "client", "image": echo, "imagePullPolicy": "IfNotPresent",
                                            "command": ["python3", "-c", probe],
                                            "securityContext": RESTRICTED_CONTAINER}]}})
    wait_for(lambda: cluster.get("pod", "client", "-n", namespace)["status"].get("phase") in ("Succeeded", "Failed"),
             timeout=90, message="the client pod to finish")
    out = cluster.kubectl("logs", "client", "-n", namespace).stdout.split()
    assert cluster.get("pod", "client", "-n", namespace)["status"]["phase"] == "Succeeded", out
    assert out[0] == cluster.get("service", "echo", "-n", namespace)["spec"]["clusterIP"]
    assert out[1].startswith("echo-")


def test_pods_reach_the_api_server_through_the_kubernetes_service(cluster, namespace, echo):
    probe = ("import socket\n"
             "s = socket.create_connection(('kubernetes.default.svc.cluster.local', 443), timeout=5)\n"
             "print('connected', s.getpeername()[0])\n")
    cluster.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "api", "namespace": namespace},
                   "spec": {"restartPolicy": "Never", "securityContext": RESTRICTED_POD,
                            "containers": [{"name": "api", "image": echo, "imagePullPolicy": "IfNotPresent",
                                            "command": ["python3", "-c", probe],
                                            "securityContext": RESTRICTED_CONTAINER}]}})
    wait_for(lambda: cluster.get("pod", "api", "-n", namespace)["status"].get("phase") in ("Succeeded", "Failed"),
             timeout=90, message="the api probe pod to finish")
    assert cluster.kubectl("logs", "api", "-n", namespace).stdout.startswith("connected 10.0.0.1")


def test_metrics_server_reports_pod_cpu_and_memory(cluster, namespace, echo):
    def usage():
        out = cluster.kubectl("get", "--raw", f"/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods",
                              check=False).stdout
        return [c["usage"] for p in json.loads(out or "{}").get("items", []) for c in p["containers"]]
    found = wait_for(lambda: len(usage()) == 2 and usage(), timeout=90, interval=2, message="pod metrics")
    assert all("cpu" in u and "memory" in u for u in found)
    assert "modelloop-node" in cluster.kubectl("top", "node").stdout
