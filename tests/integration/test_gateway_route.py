"""The canary's HTTPRoute against a real kube-apiserver with the Gateway API's standard CRDs (v1.6.3): applied the
way the operator applies its children (server-side apply, field manager modelloop-operator), step by step, refused
when broken, removed with its ModelDeployment; and, when MODELLOOP_TRAEFIK names a Traefik binary, followed by a real
Gateway: the share of requests the challenger answers moves with the steps.

The Gateway is Traefik's kubernetesGateway provider, a process on this machine reading the API server through the
admin kubeconfig, its listener on a loopback port. The two backends are HTTP servers in this process, each answering
its name, behind selector-less Services whose EndpointSlices hold `127.0.0.1` as an FQDN (the API server refuses a
loopback IP as an IPv4 endpoint, and an FQDN of one label such as `localhost`; Traefik dials the address whatever its
type). This repository builds no Traefik: without one that test is skipped (docs/challenger.md, "A Gateway
implementation here").
"""
from __future__ import annotations

import http.client
import os
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest
from kubernetes.client.exceptions import ApiException

from modelloop import kube
from modelloop.api import ModelDeploymentSpec
from modelloop.names import RECONCILE_ANNOTATION
from modelloop.render.gateway import render_httproute, route_share
from tests.fixtures.cluster import CLUSTER_DIR, Cluster, die_with_parent, wait_for
from tests.fixtures.operator import _free_port

SPEC = {"model": {"fromTraining": "churn"},
        "rollout": {"strategy": "canary", "canary": {"steps": [25, 50]},
                    "gateway": {"parentRef": {"name": "public", "sectionName": "http"}}}}


@pytest.fixture()
def owner(crds, gateway_api_crds, namespace) -> dict:
    """A real ModelDeployment with a canary through a Gateway; paused, so that no operator of another session
    reconciles it: here it only owns the route."""
    crds.apply({"apiVersion": "modelloop.dev/v1alpha1", "kind": "ModelDeployment",
                "metadata": {"name": "churn", "namespace": namespace,
                             "annotations": {RECONCILE_ANNOTATION: "disabled"}},
                "spec": SPEC})
    return crds.get("modeldeployment", "churn", "-n", namespace)


def rendered(owner: dict, weight: int) -> dict:
    spec = ModelDeploymentSpec.model_validate(owner["spec"])
    return render_httproute(owner, spec, "churn", "churn-challenger", weight)


def test_the_route_moves_through_the_canary_steps_by_server_side_apply(cluster, owner, namespace):
    for weight in (0, 25, 50, 100, 0):  # no canary, the steps, the challenger takes all, promoted
        applied = kube.apply(rendered(owner, weight))
        assert route_share(applied) == weight / 100
        back = cluster.get("httproute", "churn", "-n", namespace)
        assert route_share(back) == weight / 100
        names = [b["name"] for b in back["spec"]["rules"][0]["backendRefs"]]
        # backendRefs is an atomic list: going back to 0 removes the challenger, it is not left at its old weight.
        assert names == (["churn", "churn-challenger"] if weight else ["churn"])
    assert back["spec"]["parentRefs"][0] == {"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                             "name": "public", "sectionName": "http"}
    assert back["metadata"]["ownerReferences"][0]["uid"] == owner["metadata"]["uid"]
    assert {m["manager"] for m in applied["metadata"]["managedFields"]} == {"modelloop-operator"}


def _weight(route: dict, value) -> dict:
    route["spec"]["rules"][0]["backendRefs"][1]["weight"] = value
    return route


def _no_port(route: dict) -> dict:
    del route["spec"]["rules"][0]["backendRefs"][1]["port"]
    return route


@pytest.mark.parametrize("break_it, field", [
    (lambda r: _weight(r, 1_000_001), "spec.rules[0].backendRefs[1].weight"),  # the schema's maximum
    (lambda r: _weight(r, -1), "spec.rules[0].backendRefs[1].weight"),
    (_no_port, "Must have port for Service reference"),  # a CEL rule of the CRD
], ids=["weight-above-maximum", "negative-weight", "service-without-port"])
def test_the_schema_is_active_a_broken_route_is_refused(owner, namespace, break_it, field):
    with pytest.raises(ApiException) as refused:
        kube.apply(break_it(rendered(owner, 25)))
    assert refused.value.status == 422
    assert field in refused.value.body


def test_deleting_the_deployment_deletes_its_route(cluster, owner, namespace):
    kube.apply(rendered(owner, 25))
    cluster.kubectl("delete", "modeldeployment", "churn", "-n", namespace)
    wait_for(lambda: kube.get("gateway.networking.k8s.io/v1", "HTTPRoute", namespace, "churn") is None, timeout=120,
             interval=1, message="the garbage collector to delete the HTTPRoute of a deleted ModelDeployment")


# ----------------------------------------------------------------------------- through a real Gateway (Traefik)

TRAEFIK = os.environ.get("MODELLOOP_TRAEFIK")
REQUESTS = 400
# Traefik's weighted round robin is deterministic (smooth WRR): the share is the weight to within a request or two
# per server; the tolerance only absorbs the first requests after a reload.
TOLERANCE = 0.03


class Backend:
    """An HTTP server on loopback that answers every request with its name."""

    def __init__(self, name: str):
        body = name.encode()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK wait between

            def do_GET(self):  # noqa: N802 - http.server's name
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _service(cluster: Cluster, namespace: str, name: str, backend: Backend) -> None:
    cluster.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
                   "spec": {"ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}})
    cluster.apply({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "FQDN",
                   "metadata": {"name": name, "namespace": namespace,
                                "labels": {"kubernetes.io/service-name": name,
                                           "endpointslice.kubernetes.io/managed-by": "modelloop-tests"}},
                   "ports": [{"name": "http", "port": backend.port, "protocol": "TCP"}],
                   "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}]})


@pytest.fixture()
def backends(cluster: Cluster, namespace: str) -> Iterator[None]:
    """The champion's Service `churn` and the challenger's `churn-challenger`, each on its own backend."""
    servers = [Backend("champion"), Backend("challenger")]
    try:
        for service, server in zip(("churn", "churn-challenger"), servers):
            _service(cluster, namespace, service, server)
        yield
    finally:
        for server in servers:
            server.close()


@pytest.fixture()
def gateway(gateway_api_crds: Cluster, namespace: str) -> Iterator[int]:
    """A Gateway of a Traefik process, its listener on a loopback port (returned); Traefik stops with the test."""
    if not TRAEFIK or not Path(TRAEFIK).is_file():
        pytest.skip("no Traefik binary: set MODELLOOP_TRAEFIK to one (docs/challenger.md)")
    cluster, port, klass = gateway_api_crds, _free_port(), f"traefik-{namespace}"
    cluster.apply({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": klass},
                   "spec": {"controllerName": "traefik.io/gateway-controller"}})
    cluster.apply({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                   "metadata": {"name": "public", "namespace": namespace},
                   "spec": {"gatewayClassName": klass, "listeners": [
                       {"name": "http", "port": port, "protocol": "HTTP",
                        "allowedRoutes": {"namespaces": {"from": "Same"}}}]}})
    log = open(CLUSTER_DIR / "logs" / f"traefik-{namespace}.log", "wb")
    # Loopback only, no update check, no usage report, no dashboard: only the Gateway provider of one namespace.
    proc = subprocess.Popen(
        [TRAEFIK, f"--entryPoints.web.address=127.0.0.1:{port}", "--providers.kubernetesGateway=true",
         f"--providers.kubernetesGateway.namespaces={namespace}",
         "--providers.kubernetesGateway.throttleDuration=0s",
         "--global.checkNewVersion=false", "--global.sendAnonymousUsage=false", "--log.level=INFO",
         "--log.noColor=true"],
        env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}, stdout=log, stderr=subprocess.STDOUT,
        preexec_fn=die_with_parent)
    try:
        wait_for(lambda: any(c["type"] == "Programmed" and c["status"] == "True" for c in
                             (cluster.get("gateway", "public", "-n", namespace).get("status") or {})
                             .get("conditions", [])),
                 timeout=60, interval=0.5, message="Traefik to program the Gateway")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
        cluster.kubectl("delete", "gatewayclass", klass, "--wait=false", check=False)


def challenger_share(port: int, n: int) -> float:
    """Of `n` requests through the Gateway (one keep-alive connection), the share the challenger answered."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        answers = []
        for _ in range(n):
            conn.request("GET", "/v2/health/ready")
            answers.append(conn.getresponse().read())
    finally:
        conn.close()
    return sum(a == b"challenger" for a in answers) / n


@pytest.mark.optional(reason="no Traefik binary (MODELLOOP_TRAEFIK): this repository builds none")
def test_traffic_through_the_gateway_follows_the_canary_steps(cluster, gateway, owner, backends, namespace):
    port = gateway
    seen = []
    for weight in (0, 25, 50, 100, 0):
        started = time.monotonic()
        want = route_share(kube.apply(rendered(owner, weight)))
        # The new weights take effect when Traefik has read the route: wait for a batch at the share, then count.
        wait_for(lambda: abs(challenger_share(port, 40) - want) <= 0.1, timeout=30, interval=0.2,
                 message=f"the Gateway to send {want:.0%} to the challenger")
        moved = time.monotonic() - started
        share = challenger_share(port, REQUESTS)
        seen.append(f"weight {weight}: {share:.3f} of {REQUESTS} (moved in {moved:.1f}s)")
        assert abs(share - want) <= TOLERANCE, seen
    print("challenger's share through the Gateway, step by step: " + "; ".join(seen))
    parent = cluster.get("httproute", "churn", "-n", namespace)["status"]["parents"][0]
    assert parent["controllerName"] == "traefik.io/gateway-controller"
    assert {c["type"]: c["status"] for c in parent["conditions"]} == {"Accepted": "True", "ResolvedRefs": "True"}
