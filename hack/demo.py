#!/usr/bin/env python3
"""`make demo`: the whole loop on the embedded cluster, hands-off, the way a user runs it.

`helm install` of the chart with the images built from this checkout (the operator runs in a pod on the
real node under the chart's ServiceAccount) → train (ModelTraining: a Job in a container) → serve
(ModelDeployment: 2 server pods) → live traffic through the Service → drifted traffic → the DriftMonitor
detects drift → retrain on fresh data (the example training allows the example monitor in
spec.retrain) → the new version passes its gates and is rolled out with zero failed
requests. Then two acts on outcomes (the deployment records every prediction; the demo feeds the true labels
back by prediction id, 5 s late): concept drift (inputs unchanged, labels changed: input tests stay quiet, live
ROC AUC falls, a retrain is requested because of performance, the new version is promoted and holds) and
harmless drift (inputs shift, performance holds: drift is reported and nothing is retrained).

Repeatable: each run starts from a clean demo state (the demo namespace's resources and the examples' store
prefixes deleted, said in the timeline) and names the versions it finds, never fixed numbers.

Starts what it needs besides the cluster (started by make): a local S3-compatible server (versitygw, its posix
backend on .cluster/demo/s3) on the node address with the example data. Everything it starts is stopped by `make cluster-down`.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from hack.cluster import (BIN, STATE_DIR, StartError, alive, helm_install, images, node, read_state,  # noqa: E402
                          register_extra)

NS = "modelloop-demo"
OPERATOR_NS = "modelloop-system"
RELEASE = "modelloop"
RESTRICTED = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn", "audit")}
BUCKET = "modelloop-demo"
KUBECONFIG = STATE_DIR / "kubeconfig"
os.environ["KUBECONFIG"] = str(KUBECONFIG)
VENV_BIN = Path(sys.executable).parent
START = time.monotonic()


def say(msg: str) -> None:
    print(f"[demo {time.monotonic() - START:6.1f}s] {msg}", flush=True)


def kubectl(*args: str, input: str | None = None, check: bool = True) -> str:
    p = subprocess.run([str(BIN / "kubectl"), *args], input=input, text=True, capture_output=True)
    if check and p.returncode != 0:
        raise SystemExit(f"kubectl {' '.join(args)} failed: {p.stderr.strip()}")
    return p.stdout


def show(*args: str) -> None:
    print(kubectl(*args, "-n", NS), flush=True)


def node_address() -> str:
    """Where servers the pods must reach listen: the real node's address."""
    return (read_state() or {}).get("host", "127.0.0.1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((node_address(), 0))
        return s.getsockname()[1]


def background(name: str, argv: list[str], env: dict | None = None) -> int:
    """Start (or reuse) a long-running helper; `make cluster-down` stops it."""
    pidfile = STATE_DIR / "demo" / f"{name}.json"
    if pidfile.exists():
        info = json.loads(pidfile.read_text())
        if alive(info["pid"]):
            return info["port"]
    port = free_port()
    argv = [a.replace("{port}", str(port)) for a in argv]
    log = open(STATE_DIR / "logs" / f"{name}.log", "ab")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, **(env or {})})
    register_extra(name, proc.pid)
    pidfile.write_text(json.dumps({"pid": proc.pid, "port": port}))
    return port


def wait(what: str, predicate, timeout: float, every: float = 1.0, seen=None, look: str = ""):
    """Poll `predicate` until it is truthy; after `timeout` seconds fail, saying what was awaited, what was
    seen instead (`seen()`, a line) and where to look further (`look`, a command)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    fail(f"timed out after {timeout:.0f}s waiting for {what}", seen() if seen else "", look)


def fail(what: str, seen: str = "", look: str = "") -> None:
    """Stop the demo with what went wrong, what was seen instead, the cluster's state and where to look."""
    show("get", "modelloop,jobs,pods", "-o", "wide")
    print(kubectl("get", "events", "-n", NS, "--sort-by=.lastTimestamp"), flush=True)
    print(kubectl("logs", "-n", OPERATOR_NS, f"deploy/{RELEASE}", "--tail=40", check=False), flush=True)
    raise SystemExit(f"demo: {what}" + (f"\n  seen instead: {seen}" if seen else "")
                     + f"\n  look further: {look or f'kubectl describe modelloop -n {NS}'}"
                     + f" (KUBECONFIG={KUBECONFIG}; operator log: kubectl logs -n {OPERATOR_NS} deploy/{RELEASE})")


def seen_training() -> str:
    t = status("mtrain")
    run = (t.get("runs") or [{}])[0]
    return (f"ModelTraining churn phase={t.get('phase')} latest=v{t.get('latestVersion')} "
            f"ready={condition(t, 'Ready').get('status')} ({condition(t, 'Ready').get('message', '')}); "
            f"newest run: {run.get('job')} {run.get('result') or run.get('phase')} {run.get('message', '')}")


def seen_deployment() -> str:
    m = status("mdep")
    return (f"ModelDeployment churn serves v{m.get('modelVersion')} phase={m.get('phase')} "
            f"ready={condition(m, 'Ready').get('status')} ({condition(m, 'Ready').get('message', '')}); "
            f"candidate={m.get('candidateVersion')} promotion: {m.get('promotionMessage', '')}")


def status(kind: str, name: str = "churn") -> dict:
    out = kubectl("get", kind, name, "-n", NS, "-o", "json", check=False)
    return (json.loads(out).get("status") or {}) if out else {}


def condition(st: dict, type_: str) -> dict:
    return next((c for c in st.get("conditions") or () if c["type"] == type_), {})


def start_s3() -> str:
    """versitygw (hack/build-binaries.sh versitygw) serving .cluster/demo/s3, with the examples' demo
    credentials (examples/training.yaml) as its root account."""
    host = node_address()
    data = STATE_DIR / "demo" / "s3"
    data.mkdir(parents=True, exist_ok=True)
    out = subprocess.run([str(ROOT / "hack" / "build-binaries.sh"), "versitygw"], check=True, text=True,
                         stdout=subprocess.PIPE).stdout
    versitygw = Path(out.strip().splitlines()[-1]) / "versitygw"
    port = background("s3", [str(versitygw), "--port", f"{host}:{{port}}", "--quiet", "posix", str(data)],
                      env={"ROOT_ACCESS_KEY_ID": "demo", "ROOT_SECRET_ACCESS_KEY": "demo-secret"})
    endpoint = f"http://{host}:{port}"

    def up() -> bool:
        try:
            urllib.request.urlopen(endpoint, timeout=1)
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False
        return True
    wait("the S3 server", up, timeout=30, every=0.2, look=f"cat {STATE_DIR / 'logs' / 's3.log'}")
    s3 = s3_client(endpoint)
    if BUCKET not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
        s3.create_bucket(Bucket=BUCKET)
    s3.upload_file(str(ROOT / "examples/data/churn.csv"), BUCKET, "churn.csv")
    # The fresh data a retrain uses: the population after the change that causes the drift.
    s3.upload_file(str(ROOT / "examples/data/churn-drifted.csv"), BUCKET, "churn-fresh.csv")
    # Labelled data after the relation changed (concept drift), to retrain on in act 7.
    s3.upload_file(str(ROOT / "examples/data/churn-concept-fresh.csv"), BUCKET, "churn-concept-fresh.csv")
    return endpoint


def s3_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="demo", aws_secret_access_key="demo-secret",
                        region_name="us-east-1")


def clean_store(s3) -> None:
    """Every run starts from a clean demo state: what an earlier run wrote under the examples' output prefixes
    (model versions, which the training would otherwise continue after; prediction and label records) is
    deleted, and the timeline says so."""
    docs = [d for f in ("training.yaml", "deployment.yaml") for d in yaml.safe_load_all((ROOT / "examples" / f).read_text())
            if d]
    uris = [next(d for d in docs if d["kind"] == "ModelTraining")["spec"]["output"]["uri"],
            next(d for d in docs if d["kind"] == "ModelDeployment")["spec"]["feedback"]["uri"]]
    for uri in uris:
        bucket, prefix = uri.removeprefix("s3://").split("/", 1)
        if bucket != BUCKET:
            raise SystemExit(f"demo: the examples write to {uri}, outside the demo's bucket {BUCKET}")
        keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
                for o in page.get("Contents", ())]
        for i in range(0, len(keys), 1000):
            s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]]})
        if keys:
            parts = sorted({k[len(prefix) + 1:].split("/", 1)[0] for k in keys})
            say(f"   clean demo state: deleted {len(keys)} objects of an earlier run under {uri}/ ({', '.join(parts)})")


def namespace(name: str) -> None:
    kubectl("apply", "--server-side", "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": RESTRICTED}}))


def install_operator(built: dict[str, str]) -> None:
    """`helm upgrade --install` of charts/modelloop with the images built from this checkout."""
    namespace(OPERATOR_NS)
    values = {"image": dict(zip(("repository", "tag"), built["OPERATOR_IMAGE"].rsplit(":", 1))),
              "runtimeImage": dict(zip(("repository", "tag"), built["RUNTIME_IMAGE"].rsplit(":", 1))),
              "watchNamespaces": [NS], "resyncSeconds": 10}
    values_file = STATE_DIR / "demo" / "values.json"
    values_file.write_text(json.dumps(values, indent=2))
    try:
        helm_install(RELEASE, OPERATOR_NS, values_file)
    except StartError as e:
        raise SystemExit(f"demo: {e}")
    pods = json.loads(kubectl("get", "pods", "-n", OPERATOR_NS, "-l", "app.kubernetes.io/name=modelloop-operator",
                              "-o", "json"))["items"]
    leader = None
    for _ in range(60):  # the replicas elect a leader on a Lease named after the release
        lease = json.loads(kubectl("get", "lease", RELEASE, "-n", OPERATOR_NS, "-o", "json", check=False) or "{}")
        leader = ((lease.get("spec") or {}).get("holderIdentity") or "").rsplit("_", 1)[0] or None
        if leader:
            break
        time.sleep(1)
    pod = pods[0]
    say(f"operator installed by helm: {len(pods)} replicas ({', '.join(p['metadata']['name'] for p in pods)}) on "
        f"{pod['spec']['nodeName']}, leader {leader or '(none yet)'} by Lease {OPERATOR_NS}/{RELEASE}, serviceAccount "
        f"{pod['spec']['serviceAccountName']}, image {pod['status']['containerStatuses'][0]['imageID']}")


def apply_examples(endpoint: str) -> None:
    docs = []
    for f in ("training.yaml", "deployment.yaml", "driftmonitor.yaml"):
        for d in yaml.safe_load_all((ROOT / "examples" / f).read_text()):
            if not d:
                continue
            if d["kind"] == "Secret":
                d["stringData"]["AWS_ENDPOINT_URL"] = endpoint
            if d["kind"] == "DriftMonitor":  # a faster pace than the example, for a short demo (10s is the least)
                d["spec"].update(interval="10s", consecutive=2, minSamples=200)
            docs.append(d)
    # The loop closes only if the training lets the monitor retrain it (spec.retrain; default: nobody).
    training = next(d for d in docs if d["kind"] == "ModelTraining")
    monitor = next(d for d in docs if d["kind"] == "DriftMonitor")
    if monitor["metadata"]["name"] not in (training["spec"].get("retrain") or {}).get("allowedMonitors", []):
        raise SystemExit(f"demo: examples/training.yaml must list DriftMonitor {monitor['metadata']['name']} in "
                         f"spec.retrain.allowedMonitors, or drift can never trigger a retrain")
    kubectl("apply", "--server-side", "--force-conflicts", "-n", NS, "-f", "-", input=yaml.safe_dump_all(docs))


def performance_line() -> str:
    d = status("dmon")
    perf = condition(d, "PerformanceDegraded")
    entries = "; ".join(e.get("display", "") for e in d.get("performance") or [])
    return (f"monitor: drift={d.get('datasetDrift')} retrains={d.get('retrains', 0)} "
            f"performance={perf.get('reason', '-')} [{entries}]")


def rollout_line(m: dict) -> str:
    """The live analysis as status.rollout shows it: phase, versions, and each gate's value against its threshold."""
    ro = m.get("rollout") or {}
    if not ro.get("phase") or ro.get("phase") == "Stable":
        return f"rollout {ro.get('phase', 'Stable')}"
    gates = ", ".join(f"{g['name']}={g.get('value')} ({g['verdict']}, threshold {g.get('threshold')})"
                      for g in ro.get("gates") or ())
    return (f"rollout {ro['phase']}: champion v{ro.get('champion')} challenger v{ro.get('challenger')}"
            + (f"; gates: {gates}" if gates else "") + (f"; {ro.get('message')}" if ro.get("message") else ""))


def promotion_message(version: int) -> str:
    """The ChallengerPromoted event of `version`: the gates' values that promoted it."""
    found = json.loads(kubectl("get", "events", "-n", NS, "--field-selector",
                               "involvedObject.kind=ModelDeployment,reason=ChallengerPromoted", "-o", "json"))
    messages = [e["message"] for e in found["items"] if e["message"].startswith(f"version {version} ")]
    gates = "".join(f"\n     {g['name']}: {g['verdict']}, {g.get('message', '')}"
                    for g in (status("mdep").get("rollout") or {}).get("gates") or ())
    return (messages[-1] if messages else "(no ChallengerPromoted event)") + gates


def rejected(m: dict, version: int | None) -> bool:
    return any(r["version"] == version for r in (m.get("rollout") or {}).get("rejected") or ())


def monitor_patch(spec: dict) -> None:
    kubectl("patch", "dmon", "churn", "-n", NS, "--type=merge", "-p", json.dumps({"spec": spec}))


def act_concept_drift(traffic, served: int) -> int:
    """Act 7: inputs unchanged, the relation to the label changes; labels come back 5 s late. Input tests stay
    quiet, live ROC AUC falls, the monitor retrains on performance, the new version is promoted and its live
    performance holds again. Returns the version serving at the end."""
    from hack.traffic import batches_from_csv

    say("7/8 concept drift: the same customers start churning for a new reason (a competitor in two regions); "
        "their outcomes are fed back 5 s after each prediction (POST /v2/models/churn/feedback)")
    monitor_patch({"retrainOn": "performance", "performance": {"minLabels": 200, "maxDrop": 0.05, "window": "3m"},
                   "action": {"datasetUri": f"s3://{BUCKET}/churn-concept-fresh.csv", "cooldown": "30s"}})
    retrains = status("dmon").get("retrains", 0)
    concept = batches_from_csv(str(ROOT / "examples/data/churn-concept.csv"), "churned", with_truth=True)
    deadline = time.monotonic() + 300
    while status("dmon").get("retrains", 0) == retrains:
        if time.monotonic() > deadline:
            fail("no retrain was requested within 5 minutes of concept drift", performance_line(),
                 f"kubectl describe dmon churn -n {NS}")
        r = traffic.run(concept, seconds=5, rate=40)
        traffic.feed_back(delay=5)
        say(f"   traffic: {r.line()}; labels fed back: {traffic.labels_sent}; {performance_line()}")
    d = status("dmon")
    if d.get("datasetDrift"):
        fail("the input tests flagged drift although the inputs did not change", performance_line())
    say(f"   {condition(d, 'PerformanceDegraded').get('message')}")
    say(f"   input drift: {condition(d, 'DriftDetected').get('reason')} (the inputs did not move); retrain requested "
        f"because of performance")
    deadline = time.monotonic() + 300
    while True:
        t, m, d = status("mtrain"), status("mdep"), status("dmon")
        new = t.get("latestVersion") if (t.get("latestVersion") or 0) > served else None
        now_serving = new and m.get("modelVersion") == new and condition(m, "Ready").get("status") == "True"
        perf = condition(d, "PerformanceDegraded")
        entry = next((e for e in d.get("performance") or [] if e["version"] == new), {})
        if now_serving and perf.get("reason") == "PerformanceHolds" and entry.get("dropped") is False:
            break
        if t.get("phase") == "Failed" or rejected(m, new):
            fail(f"the version retrained on performance (v{new}) was not promoted",
                 f"{seen_training()}; {seen_deployment()}; {rollout_line(m)}")
        if time.monotonic() > deadline:
            fail(f"timed out after 300s waiting for a version after v{served} to serve and hold its live performance",
                 f"{seen_deployment()}; {performance_line()}", f"kubectl describe dmon churn -n {NS}")
        r = traffic.run(concept, seconds=5, rate=40)
        traffic.feed_back(delay=5)
        say(f"   traffic: {r.line()}; training latest=v{t.get('latestVersion')}; serving v{m.get('modelVersion')} "
            f"{m.get('phase')}; {performance_line()}; {rollout_line(m)}")
    say(f"   promoted after the shadow analysis: {promotion_message(new)}")
    say(f"   live performance recovered: {entry['display']}; {perf.get('message')}")
    return new


def act_harmless_drift(traffic, served: int) -> None:
    """Act 8: inputs shift, the relation holds: input drift is reported, live performance holds, and with
    retrainOn: performance nothing is retrained."""
    from hack.traffic import batches_from_csv

    say("8/8 harmless drift: inputs shift back towards the first population, the relation holds (retrainOn: "
        "performance): drift is reported, performance holds, no retrain")
    before = status("dmon").get("retrains", 0)
    runs = len(status("mtrain").get("runs") or [])
    shifted = batches_from_csv(str(ROOT / "examples/data/churn-shifted.csv"), "churned", with_truth=True)
    deadline = time.monotonic() + 240
    checks_after_drift = 0
    while checks_after_drift < 3:
        if time.monotonic() > deadline:
            fail("timed out after 240s waiting for the monitor to report drift and judge performance on it",
                 performance_line(), f"kubectl describe dmon churn -n {NS}")
        r = traffic.run(shifted, seconds=10, rate=40)
        traffic.feed_back(delay=5)
        d = status("dmon")
        if d.get("datasetDrift") and condition(d, "PerformanceDegraded").get("reason") == "PerformanceHolds":
            checks_after_drift += 1
        say(f"   traffic: {r.line()}; {performance_line()}")
    d, t = status("dmon"), status("mtrain")
    if d.get("retrains", 0) != before or len(t.get("runs") or []) != runs or status("mdep").get("modelVersion") != served:
        fail("harmless drift retrained", f"retrains {before} -> {d.get('retrains', 0)}; {seen_training()}")
    say(f"   {condition(d, 'DriftDetected').get('message')}"[:300])
    say(f"   {condition(d, 'PerformanceDegraded').get('message')}; retrains still {before}, v{served} still serves")


def node_line() -> str:
    n = json.loads(kubectl("get", "node", "modelloop-node", "-o", "json"))
    info = n["status"]["nodeInfo"]
    return (f"node {n['metadata']['name']}: kubelet {info['kubeletVersion']}, {info['containerRuntimeVersion']}, "
            f"kernel {info['kernelVersion']}")


def main() -> None:
    (STATE_DIR / "demo").mkdir(parents=True, exist_ok=True)
    state = read_state() or {}
    if not state.get("node"):
        raise SystemExit("demo: the cluster has no real node (MODELLOOP_NODE=0?); run `make cluster-down demo`")
    say("1/8 set-up: images, S3-compatible server with the example data, CRDs, operator (helm install)")
    built = images(node.CONTAINERD_SOCKET)  # what changed since the cluster started is rebuilt and imported
    say(f"   {node_line()}")
    for key in ("OPERATOR", "RUNTIME"):
        say(f"   {key.lower()} image {built[key + '_IMAGE']} ({built[key + '_ID']})")
    endpoint = start_s3()
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    kubectl("wait", "--for=condition=Established", "-f", str(ROOT / "crds"))
    namespace(NS)
    wait("the default service account", lambda: kubectl("get", "sa", "default", "-n", NS, check=False), 60,
         look=f"kubectl get sa -n {NS}")
    install_operator(built)
    from hack import prometheus

    # The chart's alert rules; the drift alert without its 15-minute delay, so that the demo shows it firing.
    prometheus_url = prometheus.up({"ModelDriftDetected": "0s"}, interval="5s")
    say(f"   Prometheus {prometheus_url}: scrapes the operator and every server pod, with the chart's alert rules")
    earlier = [line.split()[0] for line in kubectl("get", "modelloop", "-n", NS, "--no-headers", check=False).splitlines()]
    if earlier:  # a fresh loop on every run; the store was cleaned by start_s3
        say(f"   clean demo state: deleting {len(earlier)} resources of an earlier run ({', '.join(earlier)})")
        kubectl("delete", "driftmonitor,modeldeployment,modeltraining", "--all", "-n", NS, "--wait=true",
                "--timeout=120s", check=False)
        # Their events too: the table printed at the end is this run's story only.
        kubectl("delete", "events.events.k8s.io,events", "--all", "-n", NS, check=False)
    clean_store(s3_client(endpoint))
    apply_examples(endpoint)

    say("2/8 training churn (a Job runs modelloop-train in a container of the runtime image)")
    # A cold node pulls nothing (images are imported), so a run is the Job's start plus the fit: about a minute.
    wait("ModelTraining churn to be Ready", lambda: condition(status("mtrain"), "Ready").get("status") == "True"
         or (status("mtrain").get("phase") == "Failed" and fail("the training failed", seen_training(),
                                                                  f"kubectl logs -n {NS} job/{(status('mtrain').get('runs') or [{}])[0].get('job')}")),
         timeout=300, seen=seen_training, look=f"kubectl describe mtrain churn -n {NS}")
    first = status("mtrain")["latestVersion"]
    say(f"   trained churn v{first}")
    show("get", "mtrain")

    say(f"3/8 serving v{first} (2 pods of modelloop-serve behind Service churn)")
    wait(f"ModelDeployment churn to serve v{first} and be Ready", lambda: status("mdep").get("modelVersion") == first
         and condition(status("mdep"), "Ready").get("status") == "True", timeout=180, seen=seen_deployment,
         look=f"kubectl describe mdep churn -n {NS}")
    show("get", "mdep,deploy,pods", "-o", "wide")

    from hack.traffic import Traffic, batches_from_csv

    traffic = Traffic(NS, "churn")
    traffic.wait_ready()
    say(f"4/8 live traffic like the training data, to churn.{NS}.svc.cluster.local ({traffic.address}, resolved by "
        f"the cluster DNS; kube-proxy picks the pod): the monitor sees no drift")
    normal = traffic.run(batches_from_csv(str(ROOT / "examples/data/churn.csv"), "churned"), seconds=25, rate=40)
    say(f"   traffic: {normal.line()}")
    wait("a checked window", lambda: status("dmon").get("phase") in ("Watching", "Drifted"), timeout=60,
         seen=lambda: f"DriftMonitor churn phase={status('dmon').get('phase')} samples={status('dmon').get('samples')}",
         look=f"kubectl describe dmon churn -n {NS}")
    show("get", "dmon")

    say("5/8 the population changes (higher charges, more support calls, more premium plans): drifted traffic")
    drifted = batches_from_csv(str(ROOT / "examples/data/churn-drifted.csv"), "churned")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not status("dmon").get("retrains"):
        r = traffic.run(drifted, seconds=10, rate=40)
        d = status("dmon")
        say(f"   traffic: {r.line()}; monitor: phase={d.get('phase')} share={d.get('driftShare')} "
            f"consecutive={d.get('consecutiveDrifted')} retrains={d.get('retrains', 0)}")
    if not status("dmon").get("retrains"):
        d = status("dmon")
        fail("no retrain was requested within 10 minutes of drifted traffic",
             f"DriftMonitor churn phase={d.get('phase')} share={d.get('driftShare')} retrains={d.get('retrains', 0)}",
             f"kubectl describe dmon churn -n {NS}")
    print(condition(status("dmon"), "DriftDetected").get("message", ""), flush=True)
    wait("Prometheus to fire ModelDriftDetected", lambda: [
        a for a in prometheus.api(prometheus_url, "alerts")["alerts"]
        if a["labels"].get("alertname") == "ModelDriftDetected" and a["state"] == "firing"], timeout=60,
        seen=lambda: str([(a["labels"].get("alertname"), a["state"]) for a in prometheus.api(prometheus_url, "alerts")["alerts"]]),
        look=f"curl {prometheus_url}/api/v1/alerts")
    say("   Prometheus: alert ModelDriftDetected is firing")

    say(f"6/8 retraining on fresh data (the version after v{first}), then promotion and a rolling update under traffic")
    # A retrain is a training run (about a minute) and a rolling update of 2 pods (under a minute): 5 minutes
    # is generous, and longer means something is stuck, which the failure below names.
    deadline = time.monotonic() + 300
    while True:
        t, m = status("mtrain"), status("mdep")
        retrained = t.get("latestVersion") if (t.get("latestVersion") or 0) > first else None
        if retrained and m.get("modelVersion") == retrained and condition(m, "Ready").get("status") == "True":
            break
        if t.get("phase") == "Failed" or rejected(m, retrained):
            fail(f"the retrained version v{retrained or first + 1} was not promoted",
                 f"{seen_training()}; {seen_deployment()}; {rollout_line(m)}", f"kubectl describe mdep churn -n {NS}")
        if time.monotonic() > deadline:
            fail(f"timed out after 300s waiting for a version after v{first} to be trained and served",
                 f"{seen_training()}; {seen_deployment()}", f"kubectl describe mtrain,mdep churn -n {NS}")
        r = traffic.run(drifted, seconds=5, rate=40)
        say(f"   traffic: {r.line()}; training: phase={t.get('phase')} latest=v{t.get('latestVersion')}; "
            f"serving: v{m.get('modelVersion')} {m.get('phase')}; {rollout_line(m)}")
    say(f"   promoted after the shadow analysis: {promotion_message(retrained)}")
    traffic.run(drifted, seconds=5, rate=40)
    say(f"loop closed: v{retrained} serves (retrained from v{first}). Traffic so far: {traffic.stats.line()}")

    served = act_concept_drift(traffic, retrained)
    act_harmless_drift(traffic, served)
    traffic.close()
    say(f"all acts done: v{served} serves. All traffic of the demo: {traffic.stats.line()}; "
        f"{traffic.labels_sent} labels fed back")
    targets = prometheus.api(prometheus_url, "targets")["activeTargets"]
    say("   Prometheus targets: " + ", ".join(f"{t['labels']['job']}/{t['labels'].get('pod')} {t['health']}"
                                              for t in targets))
    save_report()
    show("get", "modelloop")
    events = kubectl("events", "-n", NS, "--types=Normal,Warning")
    print("\n".join(l for l in events.splitlines() if any(k in l for k in ("LAST SEEN", "ModelTraining/",
                                                                              "ModelDeployment/", "DriftMonitor/"))),
          flush=True)
    print(f"""
What to look at next:
  export KUBECONFIG={KUBECONFIG} PATH={BIN}:$PATH
  kubectl get nodes -o wide                      # the real node: kubelet v1.36, containerd
  kubectl get modelloop -n {NS}                  # the three resources and their columns
  kubectl describe dmon churn -n {NS}            # per-feature drift scores, conditions, events
  modelloop report dmon/churn -n {NS} > report.html   # the monitor's page (.venv/bin/modelloop): performance
                                                 # over time per version, histograms, tests, decisions
  kubectl get mtrain churn -n {NS} -o yaml       # runs, versions, metrics
  kubectl get pods -n {NS} -o wide               # server pods, each in its containers on the real node
  kubectl logs -n {OPERATOR_NS} deploy/{RELEASE}    # the operator, running in a pod under the chart's RBAC
  curl http://{traffic.address}:8080/metrics      # the Service (kube-proxy picks a pod)
  Prometheus {prometheus_url} (alerts: {prometheus_url}/alerts), for instance:
    sum by (deployment, model_version) (rate(modelloop_server_requests_total{{namespace="{NS}"}}[1m]))
    max by (monitor, feature, test) (modelloop_drift_score{{namespace="{NS}"}})
  helm list -n {OPERATOR_NS}
  logs of the node and control plane: {STATE_DIR / 'logs'}
  make cluster-down                              # stop everything
""")
    if traffic.stats.failed:
        raise SystemExit(f"demo: {traffic.stats.failed} requests failed")


def save_report() -> None:
    """The DriftMonitor's HTML report, printed by `modelloop report` as a user runs it."""
    path = STATE_DIR / "report-churn.html"
    done = subprocess.run([sys.executable, "-m", "modelloop.cli", "report", "dmon/churn", "-n", NS, "-o", str(path)],
                          env={**os.environ, "KUBECONFIG": str(KUBECONFIG)}, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        fail("the DriftMonitor's report", done.stderr.strip(), f"kubectl get dmon churn -n {NS} -o yaml")
    page = path.read_text()
    say(f"   report of DriftMonitor churn: {path} ({len(page) // 1024} KiB, {page.count('<svg')} charts), written by "
        f"the monitor at its last decision and printed by `modelloop report dmon/churn -n {NS}`")


if __name__ == "__main__":
    main()
