"""The DriftMonitor controller against the real API server and the real operator.

The live sketches come from small HTTP servers standing in for model-server pods: each listens on
its own loopback address, is listed in an EndpointSlice of the deployment's Service, and counts a
new batch of rows (from the training data or from the drifted data) every time it is asked, as a
server under traffic would. tests/e2e runs the same loop with real model servers.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import count

import pandas as pd
import pytest

from modelloop.api.deployment import SKETCH_PORT
from modelloop.artifacts import read_object
from modelloop.drift import count_into, empty_like
from tests.fixtures.cluster import ROOT, wait_for
from tests.integration.test_training_controller import HELD, KWOK

NORMAL = pd.read_csv(ROOT / "examples/data/churn.csv").drop(columns=["churned"])
DRIFTED = pd.read_csv(ROOT / "examples/data/churn-drifted.csv").drop(columns=["churned"])
_addresses = count(2)
# EndpointSlices refuse loopback addresses: the fake pods take addresses of a private range made
# local to this machine (an AnyIP route on lo), so nothing sent to them leaves it.
FAKE_POD_CIDR = "10.251.0.0/16"


def make_local(cidr: str) -> bool:
    subprocess.run(["ip", "route", "replace", "local", cidr, "dev", "lo"], capture_output=True)
    with socket.socket() as s:
        try:
            s.bind((cidr.split("/")[0].rsplit(".", 2)[0] + ".0.2", 0))
        except OSError:
            return False
    return True


class FakePod:
    """A sketch endpoint on 10.251.<n>.<m>:8081 (the servers' sketch port) that counts `rows_per_scrape`
    rows per request; a `stalled` pod accepts requests and never answers."""

    def __init__(self, reference: dict, rows_per_scrape: int = 400):
        n = next(_addresses)
        self.address = f"10.251.{n // 250}.{n % 250 + 2}"
        self.reference, self.rows = reference, rows_per_scrape
        self.data = NORMAL
        self.malformed = False
        self.stalled = False
        self.closed = threading.Event()
        self.snapshot = {**empty_like(reference), "instance": uuid.uuid4().hex, "modelVersion": 1,
                         "started": "2026-01-01T00:00:00Z"}
        self.offset, self.lock = 0, threading.Lock()
        pod = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                if pod.stalled:
                    pod.closed.wait(120)
                    return
                if not self.path.endswith("/sketch"):
                    self.send_error(404)
                    return
                body = b'{"format": "modelloop.sketch/v1", "rows": -1}' if pod.malformed else json.dumps(pod.scrape()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((self.address, SKETCH_PORT), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def scrape(self) -> dict:
        with self.lock:
            batch = self.data.iloc[[(self.offset + i) % len(self.data) for i in range(self.rows)]]
            self.offset += self.rows
            counted = count_into(self.snapshot, {c: batch[c].to_numpy() for c in batch.columns})
            self.snapshot = {**self.snapshot, **counted}
            return self.snapshot

    def close(self) -> None:
        self.closed.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def loop(operator, cluster, namespace, store):
    """A suspended ModelTraining with v1, a ModelDeployment serving it (no pods), its Service's
    EndpointSlice pointing at fake pods, and a function to create the DriftMonitor."""
    cluster.apply({"apiVersion": "modelloop.dev/v1alpha1", "kind": "ModelTraining",
                   "metadata": {"name": "churn", "namespace": namespace},
                   "spec": {**store.spec, "storage": {"secretRef": {"name": "s3"}}, "suspend": True,
                            "retrain": {"allowedMonitors": ["churn"]}}})
    cluster.apply({"apiVersion": "modelloop.dev/v1alpha1", "kind": "ModelDeployment",
                   "metadata": {"name": "churn", "namespace": namespace},
                   "spec": {"model": {"uri": store.version_uri(1)}, "replicas": 0, "podTemplate": KWOK,
                            "storage": {"secretRef": {"name": "s3"}}}})
    wait_for(lambda: (cluster.get("mdep", "churn", "-n", namespace).get("status") or {}).get("modelVersion") == 1,
             timeout=60, message="the deployment to serve v1")
    if not make_local(FAKE_POD_CIDR):
        pytest.fail(f"cannot make {FAKE_POD_CIDR} local (needs CAP_NET_ADMIN for `ip route add local`)")
    reference = store.read_metadata(1)["reference"]
    pods: list[FakePod] = []

    def add_pods(n: int = 2, listening: bool = True, stalled: bool = False) -> list[FakePod]:
        new = [FakePod(reference) for _ in range(n)]
        for p in new:
            p.stalled = stalled
            if not listening:
                p.close()
        pods.extend(new)
        cluster.apply({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                       "metadata": {"name": "churn-fake", "namespace": namespace,
                                    "labels": {"kubernetes.io/service-name": "churn",
                                               "endpointslice.kubernetes.io/managed-by": "tests.modelloop.dev"}},
                       "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                       "endpoints": [{"addresses": [p.address], "conditions": {"ready": True}} for p in pods]})
        return new

    def monitor(name: str = "churn", **spec) -> None:
        base = {"deploymentRef": {"name": "churn"}, "interval": "10s", "minSamples": 300, "consecutive": 2,
                "thresholds": {"driftShare": 0.2},
                "action": {"type": "retrain", "trainingRef": {"name": "churn"}, "cooldown": "1h"}}
        base.update(spec)
        cluster.apply({"apiVersion": "modelloop.dev/v1alpha1", "kind": "DriftMonitor",
                       "metadata": {"name": name, "namespace": namespace}, "spec": base})

    yield add_pods, monitor
    cluster.kubectl("delete", "dmon", "churn", "-n", namespace, "--wait=false", check=False)
    for p in pods:
        p.close()


def dmon(cluster, namespace) -> dict:
    return cluster.get("dmon", "churn", "-n", namespace).get("status") or {}


def cond(st: dict, type_: str) -> dict:
    return next((c for c in st.get("conditions") or () if c["type"] == type_), {})


def retrain_request(cluster, namespace) -> str | None:
    md = cluster.get("mtrain", "churn", "-n", namespace)["metadata"]
    return (md.get("annotations") or {}).get("modelloop.dev/retrain-requested")


def reasons(cluster, namespace) -> list[str]:
    return cluster.kubectl("get", "events", "-n", namespace, "--field-selector", "involvedObject.kind=DriftMonitor",
                           "-o", "jsonpath={.items[*].reason}").stdout.split()


def test_no_drift_means_no_action_and_the_window_baseline_survives_a_restart(cluster, namespace, loop, operator):
    add_pods, monitor = loop
    add_pods(2)  # each pod counts 400 new rows per scrape: a window of 800 rows per check
    monitor()
    wait_for(lambda: (dmon(cluster, namespace).get("samples") or 0) >= 300 and dmon(cluster, namespace).get("phase") == "Watching",
             timeout=60, message="a checked window")
    st = dmon(cluster, namespace)
    assert st["datasetDrift"] is False and cond(st, "DriftDetected")["status"] == "False"
    assert cond(st, "Ready")["status"] == "True" and st["modelVersion"] == 1
    assert {f["name"] for f in st["features"]} == set(NORMAL.columns)
    assert not st.get("retrains") and retrain_request(cluster, namespace) is None
    kept = cluster.get("configmap", "churn-drift-baseline", "-n", namespace)
    assert kept["metadata"]["ownerReferences"][0]["kind"] == "DriftMonitor"
    # Killed and restarted, the operator starts from the kept baseline: its first window counts the rows since the
    # last check (800), not each pod's whole life (400 per scrape so far, 1,600 and more).
    wait_for(lambda: dmon(cluster, namespace)["lastCheckTime"] != st["lastCheckTime"], timeout=30,
             message="the next check")  # the kill comes right after a check, not in the middle of one
    checked = dmon(cluster, namespace)["lastCheckTime"]
    operator.restart(kill=True)
    wait_for(lambda: dmon(cluster, namespace).get("lastCheckTime") != checked, timeout=60,
             message="a check after the restart")
    assert dmon(cluster, namespace)["samples"] == 800


def test_drift_for_fewer_than_consecutive_windows_takes_no_action(cluster, namespace, loop):
    add_pods, monitor = loop
    for p in add_pods(2):
        p.data = DRIFTED
    monitor(consecutive=100)
    wait_for(lambda: (dmon(cluster, namespace).get("consecutiveDrifted") or 0) >= 3, timeout=90,
             message="three drifted windows")
    st = dmon(cluster, namespace)
    assert cond(st, "DriftDetected")["status"] == "True" and st["phase"] == "Drifted"
    drifted = {f["name"] for f in st["features"] if f["drifted"]}
    assert {"monthly_charges", "support_calls", "plan"} <= drifted
    assert "monthly_charges" in cond(st, "DriftDetected")["message"]
    assert not st.get("retrains") and retrain_request(cluster, namespace) is None
    assert "DriftDetected" in reasons(cluster, namespace)


def drift_until_a_retrain(cluster, namespace, loop) -> None:
    """Two pods counting drifted rows, a monitor retraining after 2 drifted windows, until it asks once."""
    add_pods, monitor = loop
    for p in add_pods(2):
        p.data = DRIFTED
    monitor(consecutive=2)
    wait_for(lambda: dmon(cluster, namespace).get("retrains") == 1, timeout=90, message="the retrain request")


def test_drift_requests_exactly_one_retrain_then_none_during_the_cooldown(cluster, namespace, loop, operator):
    drift_until_a_retrain(cluster, namespace, loop)
    request = retrain_request(cluster, namespace)
    assert request and "monthly_charges" in request and request.startswith("DriftMonitor churn")
    # Drift goes on: windows keep drifting, the cooldown holds the next request back.
    wait_for(lambda: (dmon(cluster, namespace).get("consecutiveDrifted") or 0) >= 3, timeout=90,
             message="more drifted windows")
    assert dmon(cluster, namespace)["retrains"] == 1 and retrain_request(cluster, namespace) == request
    assert "RetrainSkipped" in reasons(cluster, namespace) and "RetrainRequested" in reasons(cluster, namespace)
    retrains = [l for l in operator.metrics().splitlines() if l.startswith("modelloop_drift_retrains_total{")]
    assert f'modelloop_drift_retrains_total{{monitor="churn",namespace="{namespace}"}} 1.0' in retrains, retrains


def test_each_decision_rewrites_the_report_that_modelloop_report_prints(cluster, namespace, loop, store):
    drift_until_a_retrain(cluster, namespace, loop)
    reports = f"{store.spec['output']['uri']}/reports/churn"
    assert dmon(cluster, namespace)["report"]["uri"] == f"{reports}/report.html"
    printed = subprocess.run([sys.executable, "-m", "modelloop.cli", "report", "dmon/churn", "-n", namespace,
                              "--kubeconfig", str(cluster.kubeconfig)], capture_output=True, timeout=60)
    assert printed.returncode == 0, printed.stderr.decode()
    page = printed.stdout.decode()
    assert page.startswith("<!DOCTYPE html>") and f"DriftMonitor {namespace}/churn" in page
    assert "RetrainRequested" in page and "DriftDetected" in page  # the decisions, as they were taken
    assert page.count("<svg") == 1 + len(NORMAL.columns)  # drifted share over time, one histogram a feature
    assert "last live window</span>" in page  # a live window was drawn beside the reference
    history = json.loads(read_object(f"{reports}/history.json"))
    assert history["format"] == "modelloop.report-history/v1" and len(history["points"]) >= 2
    missing = subprocess.run([sys.executable, "-m", "modelloop.cli", "report", "dmon/nothing", "-n", namespace,
                              "--kubeconfig", str(cluster.kubeconfig)], capture_output=True, timeout=60)
    assert missing.returncode == 1 and b"DriftMonitor " + namespace.encode() + b"/nothing not found" in missing.stderr


def test_unreachable_pods_are_reported_and_trigger_nothing(cluster, namespace, loop, operator):
    add_pods, monitor = loop
    add_pods(1, listening=False)
    monitor(consecutive=1)
    wait_for(lambda: cond(dmon(cluster, namespace), "Ready").get("reason") == "SketchUnavailable", timeout=60,
             message="SketchUnavailable")
    st = dmon(cluster, namespace)
    assert cond(st, "Ready")["status"] == "False" and st["phase"] == "Error"
    assert cond(st, "DriftDetected")["reason"] == "Undecided"
    assert not st.get("retrains") and retrain_request(cluster, namespace) is None
    assert f'modelloop_drift_check_errors_total{{monitor="churn",namespace="{namespace}",reason="SketchUnavailable"}}' in operator.metrics()


def test_malformed_sketch_is_reported_and_triggers_nothing(cluster, namespace, loop):
    add_pods, monitor = loop
    for p in add_pods(1):
        p.malformed = True
    monitor(consecutive=1)
    wait_for(lambda: cond(dmon(cluster, namespace), "Ready").get("reason") == "InvalidSketch", timeout=60,
             message="InvalidSketch")
    assert retrain_request(cluster, namespace) is None


def test_action_none_reports_drift_and_requests_nothing(cluster, namespace, loop):
    add_pods, monitor = loop
    for p in add_pods(2):
        p.data = DRIFTED
    monitor(consecutive=1, action={"type": "none"})
    wait_for(lambda: (dmon(cluster, namespace).get("consecutiveDrifted") or 0) >= 2, timeout=90,
             message="drifted windows")
    assert cond(dmon(cluster, namespace), "DriftDetected")["status"] == "True"
    assert not dmon(cluster, namespace).get("retrains") and retrain_request(cluster, namespace) is None


def test_dataset_uri_is_compared_with_the_training_data_by_exact_tests(cluster, namespace, loop, s3):
    _, monitor = loop
    s3.put("fresh.csv", (ROOT / "examples/data/churn-drifted.csv").read_bytes())
    s3.put("same.csv", (ROOT / "examples/data/churn.csv").read_bytes())
    monitor(datasetUri=s3.uri("same.csv"), storage={"secretRef": {"name": "s3"}}, action={"type": "none"})
    wait_for(lambda: dmon(cluster, namespace).get("phase") == "Watching", timeout=60, message="no drift on the same data")
    assert dmon(cluster, namespace)["samples"] == len(NORMAL)
    monitor(datasetUri=s3.uri("fresh.csv"), storage={"secretRef": {"name": "s3"}}, action={"type": "none"})
    wait_for(lambda: dmon(cluster, namespace).get("phase") == "Drifted", timeout=60, message="drift on fresh data")
    drifted = {f["name"]: f for f in dmon(cluster, namespace)["features"] if f["drifted"]}
    assert {"monthly_charges", "support_calls", "plan"} <= set(drifted)
    assert all(f["pValue"] < 0.05 for f in drifted.values())


def test_a_monitor_the_training_does_not_allow_cannot_retrain_it(cluster, namespace, loop):
    add_pods, monitor = loop
    cluster.kubectl("patch", "mtrain", "churn", "-n", namespace, "--type=merge", "-p",
                    json.dumps({"spec": {"retrain": {"allowedMonitors": ["someone-else"]}}}))
    for p in add_pods(2):
        p.data = DRIFTED
    monitor(consecutive=1)
    wait_for(lambda: "RetrainDenied" in reasons(cluster, namespace), timeout=60, message="RetrainDenied")
    assert not dmon(cluster, namespace).get("retrains") and retrain_request(cluster, namespace) is None
    events = cluster.kubectl("get", "events", "-n", namespace, "--field-selector",
                             "involvedObject.kind=DriftMonitor,reason=RetrainDenied", "-o", "json").stdout
    assert "spec.retrain.allowedMonitors" in events
    # A label selector on monitors works as well as names.
    cluster.kubectl("label", "dmon", "churn", "-n", namespace, "team=ml")
    cluster.kubectl("patch", "mtrain", "churn", "-n", namespace, "--type=merge", "-p",
                    json.dumps({"spec": {"retrain": {"monitorSelector": {"matchLabels": {"team": "ml"}}}}}))
    wait_for(lambda: dmon(cluster, namespace).get("retrains") == 1, timeout=60, message="the allowed retrain")
    assert retrain_request(cluster, namespace).startswith("DriftMonitor churn")


def test_32_monitors_on_stalled_pods_leave_the_other_controllers_responsive(operator, cluster, namespace, loop, s3):
    from tests.integration.test_training_controller import training

    add_pods, monitor = loop
    add_pods(2, stalled=True)
    for i in range(32):
        monitor(name=f"stalled-{i}", action={"type": "none"})
    wait_for(lambda: sum(1 for m in cluster.get("dmon", "-n", namespace)["items"]
                         if cond(m.get("status") or {}, "Ready").get("reason") == "SketchUnavailable") >= 4,
             timeout=60, message="monitors checking the stalled pods")
    cluster.apply(training(namespace, s3, name="other", podTemplate=HELD))
    wait_for(lambda: cluster.get("jobs", "-n", namespace, "-l", "modelloop.dev/training=other")["items"],
             timeout=10, message="the other training's Job while 32 monitors wait on stalled pods")
    msg = next(cond(m["status"], "Ready")["message"] for m in cluster.get("dmon", "-n", namespace)["items"]
               if cond(m.get("status") or {}, "Ready").get("reason") == "SketchUnavailable")
    assert "no answer within" in msg
