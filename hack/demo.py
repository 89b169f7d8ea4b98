#!/usr/bin/env python3
"""`make demo`: the whole loop on the embedded cluster, hands-off, the way a user runs it.

`helm install` of the chart with the images built from this checkout (the operator runs in a pod on the
real node under the chart's ServiceAccount) → train (ModelTraining: a Job in a container) → serve
(ModelDeployment: 2 server pods) → live traffic through the Service → drifted traffic → the DriftMonitor
detects drift → retrain on fresh data (the example training allows the example monitor in
spec.retrain) → the new version passes its gates and is rolled out with zero failed
requests.

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


def wait(what: str, predicate, timeout: float = 300, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    show("get", "modelloop,jobs,pods", "-o", "wide")
    print(kubectl("get", "events", "-n", NS, "--sort-by=.lastTimestamp"), flush=True)
    print(kubectl("logs", "-n", OPERATOR_NS, f"deploy/{RELEASE}", "--tail=40", check=False), flush=True)
    raise SystemExit(f"demo: timed out after {timeout:.0f}s waiting for {what}; operator log above "
                     f"(kubectl logs -n {OPERATOR_NS} deploy/{RELEASE})")


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
    wait("the S3 server", up, timeout=30, every=0.2)
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="demo", aws_secret_access_key="demo-secret",
                      region_name="us-east-1")
    if BUCKET not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
        s3.create_bucket(Bucket=BUCKET)
    s3.upload_file(str(ROOT / "examples/data/churn.csv"), BUCKET, "churn.csv")
    # The fresh data a retrain uses: the population after the change that causes the drift.
    s3.upload_file(str(ROOT / "examples/data/churn-drifted.csv"), BUCKET, "churn-fresh.csv")
    return endpoint


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
    say("1/6 set-up: images, S3-compatible server with the example data, CRDs, operator (helm install)")
    built = images(node.CONTAINERD_SOCKET)  # what changed since the cluster started is rebuilt and imported
    say(f"   {node_line()}")
    for key in ("OPERATOR", "RUNTIME"):
        say(f"   {key.lower()} image {built[key + '_IMAGE']} ({built[key + '_ID']})")
    endpoint = start_s3()
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    kubectl("wait", "--for=condition=Established", "-f", str(ROOT / "crds"))
    namespace(NS)
    wait("the default service account", lambda: kubectl("get", "sa", "default", "-n", NS, check=False), 60)
    install_operator(built)
    from hack import prometheus

    # The chart's alert rules; the drift alert without its 15-minute delay, so that the demo shows it firing.
    prometheus_url = prometheus.up({"ModelDriftDetected": "0s"}, interval="5s")
    say(f"   Prometheus {prometheus_url}: scrapes the operator and every server pod, with the chart's alert rules")
    for kind in ("driftmonitor", "modeldeployment", "modeltraining"):  # a fresh loop on every run
        kubectl("delete", kind, "--all", "-n", NS, "--wait=true", check=False)
    apply_examples(endpoint)

    say("2/6 training churn v1 (a Job runs modelloop-train in a container of the runtime image)")
    wait("ModelTraining churn to be Ready", lambda: condition(status("mtrain"), "Ready").get("status") == "True"
         or (status("mtrain").get("phase") == "Failed" and sys.exit(f"training failed: {status('mtrain')['runs'][0]}")))
    show("get", "mtrain")

    say("3/6 serving v1 (2 pods of modelloop-serve behind Service churn)")
    wait("ModelDeployment churn to be Ready", lambda: condition(status("mdep"), "Ready").get("status") == "True")
    show("get", "mdep,deploy,pods", "-o", "wide")

    from hack.traffic import Traffic, batches_from_csv

    traffic = Traffic(NS, "churn")
    traffic.wait_ready()
    say(f"4/6 live traffic like the training data, to churn.{NS}.svc.cluster.local ({traffic.address}, resolved by "
        f"the cluster DNS; kube-proxy picks the pod): the monitor sees no drift")
    normal = traffic.run(batches_from_csv(str(ROOT / "examples/data/churn.csv"), "churned"), seconds=25, rate=40)
    say(f"   traffic: {normal.line()}")
    wait("a checked window", lambda: status("dmon").get("phase") in ("Watching", "Drifted"), timeout=60)
    show("get", "dmon")

    say("5/6 the population changes (higher charges, more support calls, more premium plans): drifted traffic")
    drifted = batches_from_csv(str(ROOT / "examples/data/churn-drifted.csv"), "churned")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not status("dmon").get("retrains"):
        r = traffic.run(drifted, seconds=10, rate=40)
        d = status("dmon")
        say(f"   traffic: {r.line()}; monitor: phase={d.get('phase')} share={d.get('driftShare')} "
            f"consecutive={d.get('consecutiveDrifted')} retrains={d.get('retrains', 0)}")
    if not status("dmon").get("retrains"):
        raise SystemExit("demo: no retrain was requested within 10 minutes")
    print(condition(status("dmon"), "DriftDetected").get("message", ""), flush=True)
    wait("Prometheus to fire ModelDriftDetected", lambda: [
        a for a in prometheus.api(prometheus_url, "alerts")["alerts"]
        if a["labels"].get("alertname") == "ModelDriftDetected" and a["state"] == "firing"], timeout=60)
    say("   Prometheus: alert ModelDriftDetected is firing")

    say("6/6 retraining on fresh data, then promotion and a rolling update under traffic")
    while status("mdep").get("modelVersion") != 2 or condition(status("mdep"), "Ready").get("status") != "True":
        r = traffic.run(drifted, seconds=5, rate=40)
        t, m = status("mtrain"), status("mdep")
        say(f"   traffic: {r.line()}; training: phase={t.get('phase')} latest=v{t.get('latestVersion')}; "
            f"serving: v{m.get('modelVersion')} {m.get('phase')}")
        if t.get("phase") == "Failed" or m.get("candidateVersion") == 2:
            print(json.dumps({"training": t.get("runs", [{}])[0], "promotion": m.get("promotionMessage")}, indent=2))
            raise SystemExit("demo: the retrained version was not promoted (see above)")
        if time.monotonic() - START > 1500:
            raise SystemExit("demo: the loop did not finish within 25 minutes")
    traffic.run(drifted, seconds=5, rate=40)
    traffic.close()
    say(f"loop closed: v2 serves. All traffic of the demo: {traffic.stats.line()}")
    targets = prometheus.api(prometheus_url, "targets")["activeTargets"]
    say("   Prometheus targets: " + ", ".join(f"{t['labels']['job']}/{t['labels'].get('pod')} {t['health']}"
                                              for t in targets))
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


if __name__ == "__main__":
    main()
