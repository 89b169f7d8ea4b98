"""Servers on the local node: Deployments become Available, EndpointSlices list pod addresses where
real processes answer, readiness decides whether an endpoint is ready, deletion ends the processes."""
from __future__ import annotations

import time
import urllib.error
import urllib.request

import pytest

from tests.fixtures.cluster import wait_for
from tests.integration.localnode.helpers import container, endpoints, pod, pod_processes, pod_spec, wait_phase

pytestmark = [pytest.mark.cluster, pytest.mark.localnode]

# A server whose /ready answers 503 until someone GETs /flip; every other path answers "<pod name> <greeting>".
SERVER = """
import http.server, os
ready = os.environ.get("START_READY") == "1"
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        global ready
        if self.path == "/flip":
            ready = True
        code = 503 if self.path == "/ready" and not ready else 200
        body = f"{os.environ['POD_NAME']} {os.environ['GREETING']}".encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer((os.environ["MODELLOOP_POD_IP"], int(os.environ["PORT"])), Handler).serve_forever()
"""


def server_objects(namespace: str, name: str, replicas: int, start_ready: bool = True) -> list[dict]:
    server = container("server", ["python", "/app/server.py"],
                       env=[{"name": "PORT", "value": "8080"}, {"name": "START_READY", "value": "1" if start_ready else "0"},
                            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                            {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": name, "key": "greeting"}}}],
                       ports=[{"name": "http", "containerPort": 8080}],
                       volumeMounts=[{"name": "app", "mountPath": "/app"}],
                       readinessProbe={"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 1,
                                       "failureThreshold": 1})
    labels = {"app": name}
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace},
         "data": {"server.py": SERVER, "greeting": "hello"}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": namespace},
         "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels},
                               "spec": pod_spec(server, volumes=[{"name": "app", "configMap": {"name": name}}])}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
         "spec": {"selector": labels, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}},
    ]


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_deployment_becomes_available_and_its_endpointslice_points_at_real_servers(cluster, namespace, local_node):
    for obj in server_objects(namespace, "web", replicas=2):
        cluster.apply(obj)
    cluster.kubectl("rollout", "status", "deployment/web", "-n", namespace, "--timeout=60s", timeout=70)
    pods = cluster.get("pods", "-n", namespace, "-l", "app=web")["items"]
    ips = {p["status"]["podIP"]: p["metadata"]["name"] for p in pods}
    assert len(ips) == 2, "every pod gets its own address"
    assert all(p["spec"]["nodeName"] == local_node and p["status"]["hostIP"] == "127.0.0.1" for p in pods)
    assert "127.0.0.1" not in ips

    def both_listed():
        ready = {a for e in endpoints(cluster, namespace, "web") if e["conditions"].get("ready") for a in e["addresses"]}
        return ready == set(ips)
    wait_for(both_listed, timeout=30, message="both pod addresses ready in the EndpointSlice")
    for ip, name in ips.items():
        assert get(f"http://{ip}:8080/") == (200, f"{name} hello")
    assert len(pod_processes(namespace)) == 2


def test_failing_readiness_probe_keeps_the_endpoint_not_ready_until_it_passes(cluster, namespace, local_node):
    for obj in server_objects(namespace, "late", replicas=1, start_ready=False):
        cluster.apply(obj)
    pods = wait_for(lambda: cluster.get("pods", "-n", namespace, "-l", "app=late")["items"], timeout=20,
                    message="the pod of the Deployment")
    server = wait_phase(cluster, namespace, pods[0]["metadata"]["name"], "Running")
    ip = server["status"]["podIP"]
    wait_for(lambda: get(f"http://{ip}:8080/ready")[0] == 503, timeout=20, message="the server answering 503")
    wait_for(lambda: endpoints(cluster, namespace, "late"), timeout=20, message="an endpoint for the pod")
    time.sleep(2)  # two probe periods: the endpoint must stay not ready
    listed = endpoints(cluster, namespace, "late")
    assert [e["addresses"] for e in listed] == [[ip]]
    assert listed[0]["conditions"]["ready"] is False
    assert get(f"http://{ip}:8080/flip")[0] == 200
    wait_for(lambda: endpoints(cluster, namespace, "late")[0]["conditions"]["ready"] is True, timeout=20,
             message="the endpoint turning ready once the probe passes")


def test_deleting_a_pod_ends_its_process_within_the_grace_period(cluster, namespace, local_node):
    stubborn = container("main", ["python", "-c", "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                                  "print('ignoring SIGTERM', flush=True)\ntime.sleep(3600)"])
    polite = container("main", ["python", "-c", "import signal, sys, time\n"
                                "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\ntime.sleep(3600)"])
    cluster.apply(pod("stubborn", namespace, pod_spec(stubborn, terminationGracePeriodSeconds=2)))
    cluster.apply(pod("polite", namespace, pod_spec(polite, terminationGracePeriodSeconds=30)))
    wait_phase(cluster, namespace, "stubborn", "Running")
    wait_phase(cluster, namespace, "polite", "Running")
    wait_for(lambda: len(pod_processes(namespace)) == 2, timeout=10, message="two processes")

    started = time.monotonic()
    cluster.kubectl("delete", "pod", "polite", "-n", namespace, "--wait=true", timeout=30)
    assert time.monotonic() - started < 5, "a process that exits on SIGTERM does not wait for the grace period"
    started = time.monotonic()
    cluster.kubectl("delete", "pod", "stubborn", "-n", namespace, "--wait=true", timeout=30)
    took = time.monotonic() - started
    assert 1.5 < took < 6, f"SIGKILL follows SIGTERM after the 2 s grace period (took {took:.1f}s)"
    assert pod_processes(namespace) == {}


def test_deleting_the_deployment_leaves_no_process(cluster, namespace, local_node):
    for obj in server_objects(namespace, "gone", replicas=2):
        cluster.apply(obj)
    cluster.kubectl("rollout", "status", "deployment/gone", "-n", namespace, "--timeout=60s", timeout=70)
    assert len(pod_processes(namespace)) == 2
    cluster.kubectl("delete", "deployment", "gone", "-n", namespace)
    wait_for(lambda: not cluster.get("pods", "-n", namespace)["items"], timeout=30, message="the pods to be deleted")
    assert pod_processes(namespace) == {}
