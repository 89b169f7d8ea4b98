"""The operator at scale: 500 ModelDeployments and 500 ModelTrainings against `kubectl apply --server-side` of
the same rendered children, then 100 DriftMonitors against fake sketch endpoints.

    .venv/bin/python bench/operator/run.py [--deployments 500] [--trainings 500] [--monitors 100]
    # a quick check: --deployments 20 --autoscaled 4 --trainings 20 --monitors 5 --drift-seconds 25 --probes 4

Starts its own embedded cluster without the real node (MODELLOOP_NODE=0: etcd, kube-apiserver, kcm,
scheduler, kwok) in a private directory and removes it at the end; run it under the machine's cluster lock.
Everything goes to --namespaces namespaces `bench-<i>`, each with the Secret `s3` of a versitygw S3 server holding
one trained model version (as the integration tests do). The operator is the `modelloop-operator` process
of this checkout under the chart's RBAC (a `helm install` with no replica), with the chart's defaults
(resync 30 s, 16 workers), watching `bench-*`.

1. Operator: with the operator running, one `kubectl apply --server-side` (per --kubectl-jobs, the largest
   value) creates the ModelDeployments (`replicas: 0`; --autoscaled of them with an HPA of 1 to 3 replicas,
   which also renders a PDB, their pods on kwok nodes) and the ModelTrainings (their Jobs' pods held
   Running on kwok nodes). `operator_s`: from the start of that apply until every child (Deployment,
   Service, NetworkPolicy, HPA and PDB where rendered; each training's Job) exists and every status is
   written (observedGeneration = generation and the served version, or the run, recorded), from watch
   events. `operator_peak_mib`: the operator's VmHWM at the end of the run.
2. Drift (operator still running, all of the above present): --monitors DriftMonitors (interval 10 s,
   minSamples 300) on as many replicas-0 ModelDeployments, each Service's EndpointSlice pointing at a fake
   pod (tests/integration/test_drift_controller.py) that counts 400 more rows per scrape. Every check
   writes status.lastCheckTime; the bench takes the arrival time of each such write on a watch. A
   monitor's daemon sleeps the interval after a check, so the time between two writes minus the interval is
   how long a check took, from when it was due to its status write, queueing in the drift pool included:
   `drift_check_p99_s` is the p99 of that over every check of the window (`drift_cycle_p99_s`, the p99
   time between writes, is also recorded). Meanwhile an unrelated ModelTraining is created every 3 s:
   `training_reconcile_p99_s` is the p99, over --probes of them, of the time from its create request until
   its Job exists and its status records the run (`..._quiet_...`: the same before the monitors exist).
   `drift_window_cpu_ms_per_check`: the operator's CPU time over that window (checks and probes) per check.
3. kubectl: the operator stopped, the namespaces deleted and re-created, then for each --kubectl-jobs N:
   `kubectl apply --server-side` of the same custom resources, then of the children rendered from them with
   the operator's own render functions (render_deployment, ..., render_job) and of the statuses the operator
   wrote (`--subresource=status`), each split over N kubectl processes in parallel. `kubectl_s` is the
   best N's total wall time of the kubectl processes; `ratio` = operator_s / kubectl_s (target <= 1.2).

Results go to bench/results/operator.json.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import httpx

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from bench.measured import commit_measured  # noqa: E402
RESULTS = ROOT / "bench" / "results" / "operator.json"
LOCK = "flock /tmp/modelloop-cluster.lock"
API = "modelloop.dev/v1alpha1"
MANAGED = "app.kubernetes.io/managed-by=modelloop"
RELEASE = "modelloop-bench"
DRIFT_INTERVAL_S = 10
STOPPING = threading.Event()  # set before the cluster goes: the watches then end quietly
PROBE_TIMEOUT_S = 300  # how long an unrelated training's Job is waited for before it counts as that late
PODS_PER_KWOK_NODE = 100  # of the 110 a kwok node takes, leaving room


def p99(values: list[float]) -> float | None:
    """Nearest-rank 99th percentile."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------------
# The API from the bench's side: plain HTTP with the admin certificate; watches record arrival times.

class Api:
    def __init__(self, server: str, pki: Path):
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        self.server, self.ctx = server, ctx
        self.http = httpx.Client(base_url=server, verify=ctx, timeout=60)
        self.stopping = STOPPING

    def get(self, path: str, **params: Any) -> dict:
        r = self.http.get(path, params=params)
        r.raise_for_status()
        return r.json()

    def post(self, path: str, obj: dict) -> dict:
        r = self.http.post(path, json=obj)
        r.raise_for_status()
        return r.json()

    def watch(self, path: str, handler: Callable[[str, dict, float], None], selector: str | None = None) -> None:
        """Call handler(type, object, monotonic arrival time) for every change from now on (a thread)."""
        params = {"labelSelector": selector} if selector else {}
        rv = self.get(path, limit=1, **params)["metadata"]["resourceVersion"]
        client = httpx.Client(base_url=self.server, verify=self.ctx, timeout=None)

        def run() -> None:
            nonlocal rv
            while not self.stopping.is_set():
                try:
                    with client.stream("GET", path, params={**params, "watch": "1", "resourceVersion": rv,
                                                            "allowWatchBookmarks": "true"}) as r:
                        for line in r.iter_lines():
                            t = time.monotonic()
                            event = json.loads(line)
                            if event["type"] == "ERROR":
                                raise RuntimeError(f"watch {path}: {event['object'].get('message')}")
                            rv = event["object"]["metadata"]["resourceVersion"]
                            if event["type"] != "BOOKMARK":
                                handler(event["type"], event["object"], t)
                except Exception as e:  # noqa: BLE001 - reconnect from the last resourceVersion
                    if not self.stopping.is_set():
                        log(f"watch {path} reconnects: {e}")
                        time.sleep(0.2)

        threading.Thread(target=run, daemon=True, name=f"watch {path}").start()


class Recorder:
    """What the watches saw: when each child first appeared, when each resource's status was first
    written as wanted, and every DriftMonitor check (the arrival of each new status.lastCheckTime)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.children: dict[tuple[str, str, str], float] = {}
        self.done: dict[tuple[str, str, str], float] = {}
        self.checks: dict[tuple[str, str], list[tuple[float, str]]] = defaultdict(list)

    def clear(self) -> None:
        with self.lock:
            self.children.clear()
            self.done.clear()
            self.checks.clear()

    def child(self, kind: str) -> Callable[[str, dict, float], None]:
        def handle(type_: str, obj: dict, t: float) -> None:
            md = obj["metadata"]
            if type_ != "DELETED":
                with self.lock:
                    self.children.setdefault((kind, md["namespace"], md["name"]), t)
        return handle

    def status(self, kind: str, written: Callable[[dict], bool]) -> Callable[[str, dict, float], None]:
        def handle(type_: str, obj: dict, t: float) -> None:
            md = obj["metadata"]
            if type_ != "DELETED" and written(obj):
                with self.lock:
                    self.done.setdefault((kind, md["namespace"], md["name"]), t)
        return handle

    def drift_check(self, type_: str, obj: dict, t: float) -> None:
        last = (obj.get("status") or {}).get("lastCheckTime")
        if type_ == "DELETED" or not last:
            return
        with self.lock:
            seen = self.checks[(obj["metadata"]["namespace"], obj["metadata"]["name"])]
            if not seen or seen[-1][1] != last:
                seen.append((t, last))


def deployment_written(obj: dict) -> bool:
    st = obj.get("status") or {}
    return st.get("observedGeneration") == obj["metadata"]["generation"] and st.get("modelVersion") == 1


def training_written(obj: dict) -> bool:
    st = obj.get("status") or {}
    return st.get("observedGeneration") == obj["metadata"]["generation"] and bool(st.get("currentRun"))


# ---------------------------------------------------------------------------------------------------
# The workload

def deployment_cr(namespace: str, name: str, model_uri: str, autoscaled: bool) -> dict:
    from tests.integration.test_training_controller import KWOK

    spec: dict[str, Any] = {"model": {"uri": model_uri}, "storage": {"secretRef": {"name": "s3"}},
                            "podTemplate": KWOK}
    if autoscaled:
        spec["autoscaling"] = {"minReplicas": 1, "maxReplicas": 3}
    else:
        spec["replicas"] = 0
    return {"apiVersion": API, "kind": "ModelDeployment", "metadata": {"name": name, "namespace": namespace},
            "spec": spec}


def training_cr(namespace: str, bucket, name: str) -> dict:
    from tests.integration.test_training_controller import HELD, training

    return training(namespace, bucket, name=name, podTemplate=HELD)


def expected_children(crs: list[dict]) -> set[tuple[str, str, str]]:
    out = set()
    for cr in crs:
        ns, name = cr["metadata"]["namespace"], cr["metadata"]["name"]
        if cr["kind"] == "ModelTraining":
            out.add(("Job", ns, f"{name}-v1"))
        else:
            kinds = ["Deployment", "Service", "NetworkPolicy"]
            if cr["spec"].get("autoscaling"):
                kinds += ["HorizontalPodAutoscaler", "PodDisruptionBudget"]
            out.update((k, ns, name) for k in kinds)
    return out


def rendered_children(obj: dict) -> list[dict]:
    """What the operator applies for a resource, from its own render functions and the status it wrote."""
    from modelloop.api.deployment import ModelDeploymentSpec
    from modelloop.api.training import ModelTrainingSpec
    from modelloop.render.deployment import (
        ServedModel, render_deployment, render_hpa, render_network_policy, render_pdb, render_service,
    )
    from modelloop.render.training import render_job

    st = obj["status"]
    if obj["kind"] == "ModelTraining":
        return [render_job(obj, ModelTrainingSpec.model_validate(obj["spec"]), st["runs"][0]["version"],
                           st["runs"][0]["trigger"])]
    spec = ModelDeploymentSpec.model_validate(obj["spec"])
    model = ServedModel(st["modelVersion"], st["modelUri"], st["modelSha256"], st.get("modelMetadataSha256"))
    docs = [render_deployment(obj, spec, model), render_service(obj), render_network_policy(obj),
            render_hpa(obj, spec), render_pdb(obj, spec)]
    return [d for d in docs if d is not None]


# ---------------------------------------------------------------------------------------------------
# kubectl

class Kubectl:
    def __init__(self, binary: Path, kubeconfig: Path, workdir: Path):
        self.binary, self.kubeconfig, self.workdir = binary, kubeconfig, workdir

    def run(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(self.binary), "--kubeconfig", str(self.kubeconfig), *args], input=input,
                              text=True, capture_output=True)
        if proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)[:200]} failed: {proc.stderr[-2000:]}")
        return proc

    def apply(self, docs: list[dict], jobs: int, label: str, *extra: str) -> float:
        """`kubectl apply --server-side` of `docs`, split over `jobs` processes running in parallel, each over
        one multi-document file; the wall time until the last one ends."""
        chunks = [docs[i::jobs] for i in range(jobs) if docs[i::jobs]]
        files = []
        for i, chunk in enumerate(chunks):
            f = self.workdir / f"{label}-{i}.yaml"
            f.write_text("\n---\n".join(json.dumps(d) for d in chunk) + "\n")
            files.append(f)
        started = time.monotonic()
        with ThreadPoolExecutor(len(files)) as pool:
            list(pool.map(lambda f: self.run("apply", "--server-side", "--force-conflicts", "-f", str(f), *extra),
                          files))
        return time.monotonic() - started


# ---------------------------------------------------------------------------------------------------
# The run

def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def operator_requests(audit_log: Path, offset: int, user: str) -> tuple[int, dict[str, int]]:
    """The operator's API requests in the audit log from `offset` on (the cluster audits every request of
    a ServiceAccount): how many, and how many per verb and resource."""
    counts: dict[str, int] = defaultdict(int)
    with open(audit_log, "rb") as f:
        f.seek(offset)
        for line in f:
            event = json.loads(line)
            if event.get("user", {}).get("username") != user:
                continue
            ref = event.get("objectRef") or {}
            what = ref.get("resource", event.get("requestURI", "?")) + (f"/{ref['subresource']}" if ref.get("subresource") else "")
            counts[f"{event['verb']} {what}"] += 1
    return sum(counts.values()), dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, progress: Callable[[], str] | None = None
               ) -> None:
    deadline, shown = time.monotonic() + timeout, time.monotonic()
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}" + (f": {progress()}" if progress else ""))
        if progress and time.monotonic() - shown > 10:
            log(f"  ... {progress()}")
            shown = time.monotonic()
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deployments", type=int, default=500)
    parser.add_argument("--autoscaled", type=int, default=50, help="of the deployments, with an HPA (and a PDB)")
    parser.add_argument("--trainings", type=int, default=500)
    parser.add_argument("--namespaces", type=int, default=5)
    parser.add_argument("--monitors", type=int, default=100)
    parser.add_argument("--drift-seconds", type=float, default=90, help="how long the monitors are watched")
    parser.add_argument("--probes", type=int, default=30, help="unrelated ModelTrainings created during the drift phase")
    parser.add_argument("--kubectl-jobs", default="1,4", help="kubectl processes in parallel, comma-separated")
    parser.add_argument("--timeout", type=float, default=900, help="seconds the operator gets to converge")
    parser.add_argument("--resync", type=float, default=30, help="the operator's resync interval (the chart's default)")
    parser.add_argument("--output", default=str(RESULTS))
    parser.add_argument("--py-spy", metavar="FILE", help="profile the operator while it converges (py-spy on PATH; "
                        "collapsed stacks to FILE)")
    args = parser.parse_args()
    if args.monitors > args.deployments - args.autoscaled:
        parser.error("--monitors needs as many deployments without autoscaling")
    kubectl_jobs = [int(j) for j in args.kubectl_jobs.split(",")]

    # Stopped from outside (SIGTERM, or SIGINT in a background job, where it is ignored), the cluster still goes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    state_dir = Path(tempfile.mkdtemp(prefix="modelloop-bench-operator-"))
    os.environ.update(MODELLOOP_NODE="0", MODELLOOP_CLUSTER_DIR=str(state_dir))
    sys.path.insert(0, str(ROOT))
    up = subprocess.run([sys.executable, str(ROOT / "hack" / "cluster.py"), "up"], capture_output=True, text=True)
    try:
        if up.returncode != 0:
            raise SystemExit(f"could not start the cluster:\n{up.stderr[-3000:]}")
        subprocess.run([str(ROOT / "hack" / "build-binaries.sh"), "helm"], check=True, stdout=subprocess.DEVNULL)
        result = run(args, kubectl_jobs, state_dir)
    finally:
        STOPPING.set()
        subprocess.run([sys.executable, str(ROOT / "hack" / "cluster.py"), "down"], capture_output=True)
        shutil.rmtree(state_dir, ignore_errors=True)
        state_dir.with_name(state_dir.name + ".lock").unlink(missing_ok=True)  # hack/cluster.py's lock
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    result["commit"] = commit_measured()
    output.write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {output}")


def run(args: argparse.Namespace, kubectl_jobs: list[int], state_dir: Path) -> dict:
    from tests.fixtures.artifacts import make_store, secret
    from tests.fixtures.cluster import Cluster
    from tests.fixtures.operator import OperatorProcess, install_chart, service_account_kubeconfig
    from tests.fixtures.s3 import S3Bucket, _serve
    from hack import cluster as hack_cluster
    from modelloop.config import SETTINGS

    state = json.loads((state_dir / "state.json").read_text())
    cluster = Cluster(kubeconfig=state_dir / "kubeconfig", bin=Path(state["bin"]), state=state)
    api = Api(cluster.server, state_dir / "pki")
    kubectl = Kubectl(cluster.bin / "kubectl", cluster.kubeconfig, state_dir)
    versions = {k: v for k, v in state["versions"].items() if k in ("K8S_VERSION", "ETCD_VERSION", "KWOK_VERSION")}
    namespaces = [f"bench-{i}" for i in range(args.namespaces)]

    # The cluster: CRDs, kwok capacity for every pod, the chart's RBAC, namespaces with the store's Secret.
    cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(ROOT / "crds"))
    pods = args.trainings + args.autoscaled + 2 * args.probes
    extra_nodes = max(0, math.ceil(pods / PODS_PER_KWOK_NODE) - len(hack_cluster.KWOK_NODES))
    if extra_nodes:
        hack_cluster.create_kwok_nodes(tuple(f"kwok-bench-{i}" for i in range(extra_nodes)))
    install_chart(cluster, RELEASE, RELEASE, {"replicaCount": 0, "watchNamespaces": ["bench-*"]})
    operator_kubeconfig = service_account_kubeconfig(cluster, RELEASE, RELEASE, state_dir / "operator.kubeconfig")
    s3 = _serve("127.0.0.1", state_dir / "s3")
    server = next(s3)
    os.environ.update(server.env)  # the bench's own writes to the store (the operator reads with the Secret)
    client = server.client()
    client.create_bucket(Bucket="bench")
    bucket = S3Bucket(server=server, name="bench", client=client)
    for ns in namespaces:
        cluster.create_namespace(ns)
    store = make_store(cluster, namespaces[0], bucket)  # churn v1, trained for real, and the Secret
    for ns in namespaces[1:]:
        cluster.apply(secret(ns, bucket))
    model_uri = store.version_uri(1)

    crs: list[dict] = []
    for i in range(args.deployments):
        crs.append(deployment_cr(namespaces[i % len(namespaces)], f"md-{i:04d}", model_uri,
                                 autoscaled=i >= args.deployments - args.autoscaled))
    for i in range(args.trainings):
        crs.append(training_cr(namespaces[i % len(namespaces)], bucket, f"mt-{i:04d}"))
    expected = expected_children(crs)
    wanted = {(cr["kind"], cr["metadata"]["namespace"], cr["metadata"]["name"]) for cr in crs}

    recorder = Recorder()
    for path, kind in (("/apis/apps/v1/deployments", "Deployment"), ("/api/v1/services", "Service"),
                       ("/apis/networking.k8s.io/v1/networkpolicies", "NetworkPolicy"),
                       ("/apis/autoscaling/v2/horizontalpodautoscalers", "HorizontalPodAutoscaler"),
                       ("/apis/policy/v1/poddisruptionbudgets", "PodDisruptionBudget"),
                       ("/apis/batch/v1/jobs", "Job")):
        api.watch(path, recorder.child(kind), MANAGED)
    api.watch(f"/apis/{API}/modeldeployments", recorder.status("ModelDeployment", deployment_written))
    api.watch(f"/apis/{API}/modeltrainings", recorder.status("ModelTraining", training_written))
    api.watch(f"/apis/{API}/driftmonitors", recorder.drift_check)

    log_path = state_dir / "logs" / "operator-bench.log"
    operator = OperatorProcess(cluster, log_path, operator_kubeconfig, env={}, resync=args.resync, namespace="bench-*")
    pid = operator.proc.pid
    time.sleep(3)  # kopf's watch streams are open a moment after the liveness endpoint answers
    result: dict[str, Any] = {}
    try:
        # 1. The operator creates every child and writes every status.
        log(f"operator: {args.deployments} ModelDeployments ({args.autoscaled} autoscaled), "
            f"{args.trainings} ModelTrainings in {len(namespaces)} namespaces")
        audit_log = state_dir / "logs" / "audit.log"
        audit_offset = audit_log.stat().st_size if audit_log.exists() else 0
        profiler = subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--format", "raw", "--threads",
                                     "--output", args.py_spy], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL) if args.py_spy else None
        started = time.monotonic()
        crs_s = kubectl.apply(crs, max(kubectl_jobs), "operator-crs")

        def missing() -> tuple[int, int]:
            with recorder.lock:
                return len(expected - recorder.children.keys()), len(wanted - recorder.done.keys())

        try:
            wait_until(lambda: missing() == (0, 0), args.timeout, "the operator to converge",
                       lambda: "missing children %d, statuses %d" % missing())
            with recorder.lock:
                finished = max(max(recorder.children[k] for k in expected), max(recorder.done[k] for k in wanted))
        except SystemExit as e:  # measured as at least the timeout; the rest of the run still tells something
            log(str(e))
            finished = time.monotonic()
        result["operator_missing_at_end"] = dict(zip(("children", "statuses"), missing()))
        operator_s = finished - started
        if profiler:
            profiler.send_signal(signal.SIGINT)  # py-spy writes its output when interrupted
            profiler.wait(30)
        peak_after_create = status_kib(pid, "VmHWM") / 1024
        log(f"operator: {operator_s:.1f} s (applying the resources took {crs_s:.1f} s of it); VmHWM "
            f"{peak_after_create:.0f} MiB")
        result.update(operator_s=round(operator_s, 2), operator_apply_crs_s=round(crs_s, 2))
        total, by_kind = operator_requests(audit_log, audit_offset, f"system:serviceaccount:{RELEASE}:{RELEASE}")
        result.update(operator_requests=total, operator_requests_by_verb=by_kind)
        log(f"operator: {total} API requests until then: " + ", ".join(f"{k} {v}" for k, v in list(by_kind.items())[:12]))

        # 2. DriftMonitors on fake pods, and unrelated trainings while they check.
        result.update(drift_phase(args, api, cluster, kubectl, recorder, store, bucket, namespaces, crs, pid))
        result["operator_peak_mib"] = round(status_kib(pid, "VmHWM") / 1024, 1)
        result["operator_peak_mib_after_create"] = round(peak_after_create, 1)
        result["operator_cpu_s"] = round(hack_cluster.cpu_seconds(pid), 1)
        written = {(o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]): o
                   for ns in namespaces for plural in ("modeldeployments", "modeltrainings")
                   for o in api.get(f"/apis/{API}/namespaces/{ns}/{plural}")["items"]}
    finally:
        operator.stop()
    kept = Path(tempfile.gettempdir()) / "modelloop-bench-operator.log"
    shutil.copyfile(log_path, kept)
    log(f"the operator's log: {kept}")
    log_lines = log_path.read_text(errors="replace").splitlines()
    result["operator_log_errors"] = sum(1 for line in log_lines if "level=ERROR" in line)
    result["operator_log_pool_full"] = sum(1 for line in log_lines if "Connection pool is full" in line)

    # 3. kubectl: the same resources, children and statuses, with the operator stopped.
    statuses = {k: v["status"] for k, v in written.items() if k in wanted}
    runs = {}
    for jobs in kubectl_jobs:
        reset(cluster, namespaces, bucket, secret)
        t_crs = kubectl.apply(crs, jobs, f"kubectl{jobs}-crs")
        created = [o for ns in namespaces for plural in ("modeldeployments", "modeltrainings")
                   for o in api.get(f"/apis/{API}/namespaces/{ns}/{plural}")["items"]]
        children, status_docs = [], []
        for obj in created:
            key = (obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
            obj["status"] = statuses[key]
            children.extend(rendered_children(obj))
            status_docs.append({"apiVersion": API, "kind": obj["kind"], "status": statuses[key],
                                "metadata": {"name": key[2], "namespace": key[1]}})
        with ThreadPoolExecutor(2) as pool:  # children and statuses do not depend on each other
            t_rest = time.monotonic()
            done = [pool.submit(kubectl.apply, children, jobs, f"kubectl{jobs}-children"),
                    pool.submit(kubectl.apply, status_docs, jobs, f"kubectl{jobs}-status", "--subresource=status")]
            t_children, t_status = (f.result() for f in done)
            t_rest = time.monotonic() - t_rest
        assert len(children) == len(expected), (len(children), len(expected))
        runs[jobs] = {"total_s": round(t_crs + t_rest, 2), "crs_s": round(t_crs, 2),
                      "children_s": round(t_children, 2), "status_s": round(t_status, 2), "objects": len(children)}
        log(f"kubectl x{jobs}: {t_crs + t_rest:.1f} s (resources {t_crs:.1f} s, then children {t_children:.1f} s "
            f"beside statuses {t_status:.1f} s)")
    best = min(runs, key=lambda j: runs[j]["total_s"])
    kubectl_s = runs[best]["total_s"]
    s3.close()

    result.update(
        kubectl_s=kubectl_s, ratio=round(result["operator_s"] / kubectl_s, 3), target_ratio=1.2,
        kubectl_best_jobs=best, kubectl_runs={str(j): r for j, r in runs.items()},
        deployments=args.deployments, autoscaled=args.autoscaled, trainings=args.trainings,
        namespaces=args.namespaces, children=len(expected), monitors=args.monitors,
        drift_interval_s=DRIFT_INTERVAL_S,
        operator_settings={"resync_seconds": args.resync, "workers": SETTINGS.workers, "drift_workers": SETTINGS.drift_workers},
        versions={**versions, "python": platform.python_version(), "kopf": _version("kopf"),
                  "kubernetes_client": _version("kubernetes")},
        machine={"cpus": os.cpu_count(), "machine": platform.machine(),
                 "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024 ** 3, 1),
                 "loadavg_at_end": os.getloadavg()},
        cluster="embedded, no real node (MODELLOOP_NODE=0): etcd, kube-apiserver, kcm, scheduler, kwok",
        date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    print_summary(result)
    return result


def reset(cluster, namespaces: list[str], bucket, secret) -> None:
    """Delete the namespaces (and so everything in them), wait until they are gone, create them again."""
    cluster.kubectl("delete", "namespace", *namespaces, "--wait=true", "--timeout=600s", timeout=660)
    for ns in namespaces:
        cluster.create_namespace(ns)
        cluster.apply(secret(ns, bucket))


def drift_phase(args, api: Api, cluster, kubectl: Kubectl, recorder: Recorder, store, bucket,
                namespaces: list[str], crs: list[dict], pid: int) -> dict:
    from tests.integration.test_drift_controller import FAKE_POD_CIDR, FakePod, make_local
    from hack.cluster import cpu_seconds

    probe_ns = namespaces[0]
    probes: dict[str, float] = {}
    unfinished: dict[str, int] = {}

    def probe_round(count: int, prefix: str, spacing: float) -> list[float]:
        names = []
        for i in range(count):
            name = f"{prefix}-{i:03d}"
            probes[name] = time.monotonic()
            api.post(f"/apis/{API}/namespaces/{probe_ns}/modeltrainings", training_cr(probe_ns, bucket, name))
            names.append(name)
            time.sleep(spacing)

        def latencies() -> list[float | None]:
            with recorder.lock:
                out: list[float | None] = []
                for n in names:
                    job, st = recorder.children.get(("Job", probe_ns, f"{n}-v1")), recorder.done.get(
                        ("ModelTraining", probe_ns, n))
                    out.append(None if job is None or st is None else max(job, st) - probes[n])
                return out
        deadline = time.monotonic() + PROBE_TIMEOUT_S
        while None in latencies() and time.monotonic() < deadline:
            time.sleep(0.2)
        # A training still without its Job at the deadline counts with the time it has waited (at least).
        unfinished[prefix] = latencies().count(None)
        now = time.monotonic()
        return [now - probes[n] if x is None else x for n, x in zip(names, latencies())]

    log("drift: an unrelated ModelTraining at a time, before any DriftMonitor exists")
    quiet = probe_round(max(5, args.probes // 3), "quiet", 1.0)

    if not make_local(FAKE_POD_CIDR):
        raise SystemExit(f"cannot make {FAKE_POD_CIDR} local (needs CAP_NET_ADMIN for `ip route add local`)")
    reference = store.read_metadata(1)["reference"]
    targets = [cr for cr in crs if cr["kind"] == "ModelDeployment" and cr["spec"].get("replicas") == 0][:args.monitors]
    pods = [FakePod(reference) for _ in targets]
    slices, monitors = [], []
    for cr, pod in zip(targets, pods):
        ns, name = cr["metadata"]["namespace"], cr["metadata"]["name"]
        slices.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                       "metadata": {"name": f"{name}-fake", "namespace": ns,
                                    "labels": {"kubernetes.io/service-name": name,
                                               "endpointslice.kubernetes.io/managed-by": "bench.modelloop.dev"}},
                       "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                       "endpoints": [{"addresses": [pod.address], "conditions": {"ready": True}}]})
        monitors.append({"apiVersion": API, "kind": "DriftMonitor", "metadata": {"name": name, "namespace": ns},
                         "spec": {"deploymentRef": {"name": name}, "interval": f"{DRIFT_INTERVAL_S}s",
                                  "minSamples": 300, "thresholds": {"driftShare": 0.2}, "action": {"type": "none"}}})
    try:
        kubectl.apply(slices, 1, "slices")
        log(f"drift: {len(monitors)} DriftMonitors every {DRIFT_INTERVAL_S} s for {args.drift_seconds:.0f} s, "
            f"{args.probes} unrelated ModelTrainings meanwhile")
        kubectl.apply(monitors, 1, "monitors")
        window_start, cpu_start = time.monotonic(), cpu_seconds(pid)
        busy = probe_round(args.probes, "busy", max(0.5, args.drift_seconds / max(1, args.probes)))
        time.sleep(max(0.0, window_start + args.drift_seconds - time.monotonic()))
        window_cpu = cpu_seconds(pid) - cpu_start
        with recorder.lock:
            checks = {k: [t for t, _ in v] for k, v in recorder.checks.items()}
        pods_scraped = sum(p.offset for p in pods) // 400
    finally:
        for p in pods:
            p.close()
    # The first check of a monitor follows its creation, not an interval: cycles start at the second.
    cycles = [b - a for ts in checks.values() for a, b in zip(ts, ts[1:])]
    first = [ts[0] - window_start for ts in checks.values() if ts]
    done = len(cycles) + len(first)
    return {"drift_check_p99_s": _round(p99([c - DRIFT_INTERVAL_S for c in cycles])),
            "drift_cycle_p99_s": _round(p99(cycles)), "drift_cycle_median_s": _round(sorted(cycles)[len(cycles) // 2] if cycles else None),
            "drift_checks": done, "drift_monitors_checked": len(checks),
            "drift_first_check_p99_s": _round(p99(first)), "drift_scrapes": pods_scraped,
            # The operator's CPU over the window (the checks and the probes' reconciles) per check.
            "drift_window_cpu_s": _round(window_cpu),
            "drift_window_cpu_ms_per_check": _round(1000 * window_cpu / max(1, done)),
            "training_reconcile_p99_s": _round(p99(busy)), "training_reconcile_median_s": _round(sorted(busy)[len(busy) // 2]),
            "training_reconcile_quiet_p99_s": _round(p99(quiet)), "training_probes": len(busy),
            "training_probes_unfinished": unfinished}


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


def print_summary(r: dict) -> None:
    print(f"\n== operator at scale: {r['deployments']} ModelDeployments ({r['autoscaled']} autoscaled), "
          f"{r['trainings']} ModelTrainings, {r['children']} children")
    print(f"operator                       {r['operator_s']:8.1f} s   peak RSS {r['operator_peak_mib']:.0f} MiB")
    for jobs, k in r["kubectl_runs"].items():
        print(f"kubectl apply --server-side x{jobs} {k['total_s']:6.1f} s")
    ok = "met" if r["ratio"] <= r["target_ratio"] else "NOT met"
    print(f"ratio operator / best kubectl  {r['ratio']:8.2f}     (target <= {r['target_ratio']}: {ok})")
    print(f"{r['monitors']} DriftMonitors every {r['drift_interval_s']} s: check p99 {r['drift_check_p99_s']} s "
          f"(cycle p99 {r['drift_cycle_p99_s']} s, {r['drift_checks']} checks, operator CPU "
          f"{r.get('drift_window_cpu_ms_per_check')} ms per check)")
    print(f"unrelated ModelTraining reconcile p99 {r['training_reconcile_p99_s']} s while they check, "
          f"{r['training_reconcile_quiet_p99_s']} s before\n")


if __name__ == "__main__":
    main()
