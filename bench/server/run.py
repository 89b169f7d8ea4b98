"""modelloop-serve against MLServer 1.7.1, three comparisons in one run: same model, same payloads, same load
tool, same CPU.

    .venv/bin/python bench/server/run.py                      # the full run (about 43 min on 2 cores)
    .venv/bin/python bench/server/run.py --models logreg --connections 1 --rows 1 --repeat 1 --duration 1 \
        --warmup 1 --output /tmp/server-smoke.json         # a smoke run: every server starts and agrees

The comparisons (`comparison` and `what_it_compares` in the results file):
(a) servers: modelloop-serve --runtime sklearn against MLServer's SKLearn runtime, the same fitted estimator
    in both (model.skops for one, joblib for the other): the servers differ, the runtime does not.
(b) servers on ONNX: modelloop-serve --runtime onnx against MLServer serving the same model.onnx through an
    onnxruntime runtime written as an MLServer user would (bench/server/mlserver_onnx.py, its MLModel API).
(c) what a user gets: modelloop-serve as a ModelDeployment runs it (runtime auto: onnxruntime when the
    trainer wrote model.onnx) against MLServer's SKLearn runtime, each given the same trained estimator.
(a) and (c) are the primary comparisons; (b) is measured at fewer connection counts and repetitions
(--secondary-connections, --secondary-repeat).

What it does:
1. Set-up: installs wrk with apt-get when missing and running as root (exits with what to do otherwise),
   checks taskset, and creates MLServer's own venv at bench/.venv-mlserver when missing (mlserver 1.7.1,
   mlserver-sklearn 1.7.1, uvloop<0.22: newer uvloop crashes its inference worker), with our venv's
   versions of scikit-learn (both servers unpickle the same estimator with the same code), onnxruntime
   (both run the same graph with the same code) and httptools (uvicorn parses HTTP with it when installed,
   as it does for modelloop-serve; MLServer's settings have no option for the parser, and MLServer installs
   uvloop's event loop itself). An existing venv gets whichever of the three it lacks.
2. Per model, in turn (only one model's servers are up at a time): trains it with modelloop's trainer on
   one 16-feature numeric dataset and writes the version to a file:// folder (model.skops and model.onnx);
   loads that very model object back and saves it with joblib for MLServer's scikit-learn runtime; MLServer's
   ONNX runtime loads the version's model.onnx. Models: RandomForest (50 trees, depth 8),
   HistGradientBoosting (scikit-learn defaults), LogisticRegression.
3. Starts the servers, each pinned with taskset to the same CPU (--server-cpus), wrk on another (--load-cpus):
   - modelloop-serve --runtime sklearn and --runtime onnx, each with --max-batch-wait-ms of --batch-waits-ms
     (default: the ModelDeployment default, ServerSpec.max_batch_wait_ms);
   - modelloop-serve --runtime auto, long enough to read its V2 model metadata (GET /v2/models/<name>: its
     platform, its parameters.runtime, the model's digest): when it is exactly that of a server above, auto
     *is* that server, and comparison (c) uses its measurements (for these three models: the onnx one); when
     not, auto is measured as a server of its own;
   - MLServer with its SKLearn runtime and with mlserver_onnx.OnnxModel, each with parallel_workers 0
     (inference in the server process) and 1 (one inference worker process, its default), each with adaptive
     batching off (its default) and on (max_batch_size 32, max_batch_time 0.002 s in model-settings.json).
     MLServer runs with debug=false (no access log).
4. Checks every server answers each payload with the same predictions, warms each up, then repeats:
   for each connection count, every server measured at that count in turn (the order rotates per
   repetition), so that background load on the machine hits all servers alike. MLServer's ONNX servers,
   in comparison (b) only, are measured at the connection counts of --secondary-connections and in the
   first --secondary-repeat repetitions; every other server at all of --connections in every repetition.
5. Per comparison and cell (rows x connections): the median over the repetitions of req/s, p50 and p99 of
   each server; our configs' ratios against the best MLServer configuration of the cell (by req/s, named
   with * in the table); the issue's targets. Prints each comparison's table under its label and writes
   --output (default bench/results/server.json) with the raw repetitions.

Duration of the default run: 3 models x 2 payloads x (10 servers x 2 s warm-up + 3 repetitions x 3
connection counts x 6 servers x 5 s + 2 repetitions x 2 connection counts x 4 MLServer ONNX servers x 5 s)
= 3 x 2 x 370 s = 2220 s of wrk, about 0.1 s for each of its 480 starts, and per model about 100 s of
training (1 to 25 s), start-up of 11 servers on one CPU (55 to 70 s) and shut-down (15 to 22 s), as a smoke
run of all three models measured them under a load average of 5: about 43 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from summary import (MLSERVER, MODELLOOP, check_targets, common_plan, comparison_runs, format_comparison,
                     measurement_plan, summarise_cells)

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from bench.measured import commit_measured  # noqa: E402
MLSERVER_VENV = ROOT / "bench" / ".venv-mlserver"
MLSERVER_PACKAGES = ["mlserver==1.7.1", "mlserver-sklearn==1.7.1", "uvloop<0.22"]
MATCHED_PACKAGES = ("scikit-learn", "onnxruntime", "httptools")  # installed in MLServer's venv at our versions
MLSERVER_BATCHING = {"max_batch_size": 32, "max_batch_time": 0.002}  # MLServer's ModelSettings fields
# MLServer's runtime for each of modelloop-serve's: its own for scikit-learn, ours (written with its API) for ONNX
MLSERVER_RUNTIMES = {"sklearn": "mlserver_sklearn.SKLearnModel", "onnx": "mlserver_onnx.OnnxModel"}
MLSERVER_ONNX = Path(__file__).with_name("mlserver_onnx.py")
RESULTS = ROOT / "bench" / "results" / "server.json"
FEATURES = 16
MODEL_NAME = "bench"
MODELS = {
    "rf": {"estimator": {"class": "sklearn.ensemble.RandomForestClassifier",
                         "params": {"n_estimators": 50, "max_depth": 8}},
           "target": {"rps_ratio": 10, "p99_ratio": 0.5}},
    "hgb": {"estimator": {"class": "sklearn.ensemble.HistGradientBoostingClassifier", "params": {}},
            "target": {"rps_ratio": 5}},
    "logreg": {"estimator": {"class": "sklearn.linear_model.LogisticRegression", "params": {"max_iter": 1000}},
               "target": {"rps_ratio": 5}},
}
# POST the JSON file named by $BENCH_BODY (shared with bench/overload and bench/limits).
WRK_REQUEST = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.body = f:read("*a")
f:close()
"""
WRK_SCRIPT = WRK_REQUEST + r"""
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT {\"requests\": %d, \"duration_us\": %d, \"p50_us\": %d, \"p99_us\": %d, \"status_errors\": %d, " ..
    "\"socket_errors\": %d}\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), e.status,
    e.connect + e.read + e.write + e.timeout))
end
"""


@dataclass(frozen=True)
class Comparison:
    comparison: str  # its label, in the results file and over its tables
    what_it_compares: str
    modelloop_runtime: str  # modelloop-serve's --runtime
    mlserver_runtime: str  # a key of MLSERVER_RUNTIMES
    secondary: bool = False  # measured at --secondary-connections, in --secondary-repeat repetitions


COMPARISONS = (
    Comparison("(a) servers", "modelloop-serve --runtime sklearn vs MLServer's SKLearn runtime: the same "
                              "scikit-learn estimator in both, so the servers differ and the runtime does not",
               "sklearn", "sklearn"),
    Comparison("(b) servers on ONNX", "modelloop-serve --runtime onnx vs MLServer with an onnxruntime MLModel "
                                      "(bench/server/mlserver_onnx.py): the same model.onnx in both", "onnx", "onnx",
               secondary=True),
    Comparison("(c) what a user gets", "modelloop-serve as deployed (runtime auto: onnxruntime when the trainer wrote "
                                       "model.onnx) vs MLServer's SKLearn runtime, each given the same trained "
                                       "estimator", "auto", "sklearn"),
)


@dataclass
class Server:
    label: str
    kind: str  # modelloop | mlserver
    config: dict[str, Any]  # what distinguishes this configuration, for the report
    port: int
    command: list[str]
    cwd: Path
    log: Path
    process: subprocess.Popen | None = None

    @property
    def model_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v2/models/{MODEL_NAME}"

    @property
    def infer_url(self) -> str:
        return f"{self.model_url}/infer"

    def start(self, cpus: str) -> None:
        self.process = subprocess.Popen(["taskset", "-c", cpus, *self.command], cwd=self.cwd,
                                        stdout=self.log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.label} exited ({self.process.returncode}); see {self.log}:\n"
                                   f"{self.log.read_text(errors='replace')[-2000:]}")
            try:
                if httpx.get(f"{self.model_url}/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{self.label} not ready after {timeout}s; see {self.log}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGINT)  # its own session: the server and its workers only
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- set-up ------------------------------------------------------------------------------------------------

def ensure_tools() -> None:
    if shutil.which("taskset") is None:
        sys.exit("taskset is required (package util-linux): the servers and wrk are pinned to separate CPUs")
    if shutil.which("wrk") is not None:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        sys.exit("wrk is required and this is not root with apt-get: install it (e.g. sudo apt-get install -y wrk)")
    print("installing wrk (apt-get install -y wrk)", flush=True)
    install = ["apt-get", "install", "-y", "-q", "wrk"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(install, env=env).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True)
        subprocess.run(install, env=env, check=True)


def ensure_mlserver_venv() -> None:
    """MLServer's venv, with MATCHED_PACKAGES at the versions of ours (installed when it lacks them)."""
    python = MLSERVER_VENV / "bin" / "python"
    ours = {name: metadata.version(name) for name in MATCHED_PACKAGES}
    if not (MLSERVER_VENV / "bin" / "mlserver").exists():
        pins = [*MLSERVER_PACKAGES, *(f"{name}=={version}" for name, version in ours.items())]
        print(f"creating {MLSERVER_VENV} ({', '.join(pins)})", flush=True)
        subprocess.run(["python3.11", "-m", "venv", str(MLSERVER_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *pins], check=True)
        return
    theirs = mlserver_versions()
    missing = [f"{name}=={version}" for name, version in ours.items() if theirs.get(name) != version]
    if missing:
        print(f"installing {', '.join(missing)} into {MLSERVER_VENV}", flush=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *missing], check=True)


def mlserver_versions() -> dict[str, str | None]:
    code = ("import json, importlib.metadata as m\n"
            "def version(p):\n"
            "    try:\n        return m.version(p)\n"
            "    except m.PackageNotFoundError:\n        return None\n"
            "print(json.dumps({p: version(p) for p in ('mlserver', 'mlserver-sklearn', 'uvicorn', 'uvloop', "
            f"{', '.join(repr(p) for p in MATCHED_PACKAGES)})}}))")
    out = subprocess.run([str(MLSERVER_VENV / "bin" / "python"), "-c", code], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out)


def machine_info() -> dict[str, Any]:
    import sklearn

    cpu_model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.processor())
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    return {"cpus": os.cpu_count(), "cpu_model": cpu_model, "python": platform.python_version(),
            "platform": platform.platform(), "load_average_at_start": list(os.getloadavg()),
            "wrk": (wrk.stdout or wrk.stderr).splitlines()[0] if (wrk.stdout or wrk.stderr) else "unknown",
            "scikit_learn": sklearn.__version__, "onnxruntime": metadata.version("onnxruntime"),
            # the benchmarks that measure only modelloop (bench/limits) never create MLServer's venv
            **({"mlserver_venv": mlserver_versions()} if (MLSERVER_VENV / "bin" / "python").exists() else {})}


# -- models and servers ------------------------------------------------------------------------------------

def dataset(path: Path) -> None:
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=5000, n_features=FEATURES, n_informative=8, random_state=0)
    frame = pd.DataFrame(x, columns=[f"f{i:02d}" for i in range(FEATURES)])
    frame["label"] = y
    frame.to_csv(path, index=False)


def build_model(work: Path, key: str, data: Path) -> tuple[str, Path, Path]:
    """Train with modelloop's trainer; save the loaded model object with joblib for MLServer too.
    Returns the version's URI and folder, and MLServer's model folder."""
    import joblib

    from modelloop.artifacts import load_model
    from modelloop.training.trainer import train

    output = work / key / "out"
    train({"dataset": {"uri": f"file://{data}", "target": "label"}, "estimator": MODELS[key]["estimator"],
           "output": {"uri": f"file://{output}"}}, version=1, identity={"name": MODEL_NAME})
    uri = f"file://{output}/v1"
    model = load_model(uri).model
    mlserver_dir = work / key / "mlserver"
    (mlserver_dir / "model").mkdir(parents=True)
    joblib.dump(model, mlserver_dir / "model" / "model.joblib")
    return uri, output / "v1", mlserver_dir


def modelloop_server(label: str, uri: str, work: Path, extra: list[str], config: dict[str, Any]) -> Server:
    """`work`: this model's folder (logs go there)."""
    port = free_port()
    return Server(label, MODELLOOP, config, port,
                  [sys.executable, "-m", "modelloop_server.cli", "--model-uri", uri, "--model-name", MODEL_NAME,
                   "--host", "127.0.0.1", "--port", str(port), "--sketch-port", str(free_port()),
                   "--log-level", "warning", *extra],
                  ROOT, work / f"{label}.log")


def mlserver_server(label: str, mlserver_dir: Path, work: Path, parallel_workers: int, batching: bool,
                    runtime: str = "sklearn", model_onnx: Path | None = None) -> Server:
    """`work`: this model's folder (the server's model repository and log go there). `runtime` "sklearn" serves
    mlserver_dir's model.joblib with MLServer's SKLearn runtime; "onnx" serves `model_onnx` with
    mlserver_onnx.OnnxModel, copied into the model folder next to model-settings.json."""
    port = free_port()
    folder = work / re.sub(r"[^A-Za-z0-9=.,-]+", "_", label)
    shutil.copytree(mlserver_dir, folder)
    settings = {"http_port": port, "grpc_port": free_port(), "metrics_port": free_port(), "debug": False,
                "host": "127.0.0.1", "parallel_workers": parallel_workers}
    (folder / "settings.json").write_text(json.dumps(settings))
    uri = "./model.joblib"
    if runtime == "onnx":
        assert model_onnx is not None, "the ONNX runtime needs the version's model.onnx"
        shutil.copy(MLSERVER_ONNX, folder / "model" / MLSERVER_ONNX.name)
        uri = str(model_onnx)
    model_settings: dict[str, Any] = {"name": MODEL_NAME, "implementation": MLSERVER_RUNTIMES[runtime],
                                      "parameters": {"uri": uri, "version": "v1"}}
    if batching:
        model_settings.update(MLSERVER_BATCHING)
    (folder / "model" / "model-settings.json").write_text(json.dumps(model_settings))
    config = {"runtime": runtime, "implementation": MLSERVER_RUNTIMES[runtime], "parallel_workers": parallel_workers,
              "debug": False, "adaptive_batching": MLSERVER_BATCHING if batching else "off"}
    return Server(label, MLSERVER, config, port, [str(MLSERVER_VENV / "bin" / "mlserver"), "start", str(folder)],
                  folder, work / f"{folder.name}.log")


def servers_for(uri: str, version_dir: Path, mlserver_dir: Path, work: Path, waits: list[float]) -> list[Server]:
    """modelloop-serve with each runtime of the comparisons and each batch wait; MLServer with each of its runtimes
    in four configurations (in process or one worker, adaptive batching off or on)."""
    batch_label = f"batch={MLSERVER_BATCHING['max_batch_size']}/{MLSERVER_BATCHING['max_batch_time'] * 1000:g}ms"
    runtimes = dict.fromkeys(c.modelloop_runtime for c in COMPARISONS)
    servers = [modelloop_server(f"modelloop {runtime}(wait={wait:g}ms)", uri, work,
                                ["--runtime", runtime, "--max-batch-wait-ms", f"{wait:g}"],
                                {"runtime": runtime, "max_batch_wait_ms": wait})
               for runtime in runtimes for wait in waits]
    for runtime in dict.fromkeys(c.mlserver_runtime for c in COMPARISONS):
        for batching in (False, True):
            for workers in (0, 1):
                label = f"mlserver {runtime}(pw={workers}{',' + batch_label if batching else ''})"
                servers.append(mlserver_server(label, mlserver_dir, work, workers, batching, runtime,
                                               version_dir / "model.onnx"))
    return servers


def modelloop_runtime(server: Server, version_dir: Path) -> dict[str, Any]:
    """Which runtime modelloop-serve used: what its V2 model metadata says, and whether model.onnx exists."""
    metadata = httpx.get(server.model_url, timeout=10).json()
    parameters = metadata.get("parameters") or {}
    return {"metadata_platform": metadata.get("platform"), "metadata_runtime": parameters.get("runtime"),
            "model_onnx_in_version": (version_dir / "model.onnx").exists(),
            "version_files": sorted(p.name for p in version_dir.iterdir())}


def resolve_auto(servers: list[Server]) -> dict[str, str]:
    """auto label -> the label of the modelloop server (same batch wait, runtime sklearn or onnx) whose V2 model
    metadata (platform, parameters.runtime, the model's digest, inputs, outputs) is exactly that auto server's:
    the same model served the same way, measured once. An auto server that matches none is left out."""
    documents = {s.label: httpx.get(s.model_url, timeout=10).json() for s in servers if s.kind == MODELLOOP}
    same: dict[str, str] = {}
    for auto in (s for s in servers if s.kind == MODELLOOP and s.config["runtime"] == "auto"):
        match = next((s.label for s in servers if s.kind == MODELLOOP and s.config["runtime"] != "auto"
                      and s.config["max_batch_wait_ms"] == auto.config["max_batch_wait_ms"]
                      and documents[s.label] == documents[auto.label]), None)
        if match is not None:
            same[auto.label] = match
    return same


def comparison_servers(comparison: Comparison, servers: list[Server], auto_is: dict[str, str]) -> dict[str, str]:
    """The servers of one comparison: label shown -> label measured (an auto server stands for the one it is)."""
    shown: dict[str, str] = {}
    for server in servers:
        runtime = comparison.modelloop_runtime if server.kind == MODELLOOP else comparison.mlserver_runtime
        if server.config["runtime"] == runtime:
            shown[server.label] = auto_is.get(server.label, server.label)
    return shown


# -- measuring ---------------------------------------------------------------------------------------------

def payload(rows: int) -> dict[str, Any]:
    x = np.random.default_rng(rows).normal(size=(rows, FEATURES)).round(6)
    return {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [rows, FEATURES], "data": x.tolist()}]}


def predictions(server: Server, body: dict[str, Any]) -> list[Any]:
    response = httpx.post(server.infer_url, json=body, timeout=30)
    response.raise_for_status()
    return response.json()["outputs"][0]["data"]


def run_wrk(url: str, body_file: Path, script: Path, connections: int, seconds: int, cpus: str) -> dict[str, Any]:
    command = ["taskset", "-c", cpus, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
               "-s", str(script), url]
    out = subprocess.run(command, env={**os.environ, "BENCH_BODY": str(body_file)}, capture_output=True, text=True,
                         check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("RESULT "))
    raw = json.loads(line.removeprefix("RESULT "))
    return {"requests": raw["requests"], "rps": raw["requests"] / (raw["duration_us"] / 1e6),
            "p50_ms": raw["p50_us"] / 1000, "p99_ms": raw["p99_us"] / 1000,
            "errors": raw["status_errors"] + raw["socket_errors"]}


def measure(server: Server, body: Path, script: Path, conns: int, seconds: int, cpus: str) -> dict[str, Any]:
    """One wrk run, with the server's CPU time per request and the load average at its end."""
    from hack.cluster import cpu_seconds

    assert server.process is not None
    before = cpu_seconds(server.process.pid)
    run = run_wrk(server.infer_url, body, script, conns, seconds, cpus)
    run["cpu_us_per_request"] = (cpu_seconds(server.process.pid) - before) / max(run["requests"], 1) * 1e6
    run["load_1m"] = os.getloadavg()[0]
    return run


@dataclass
class Paired:
    """Two servers measured against each other in the same run: every repetition runs both, back to back, the
    first of the pair alternating, so that slow drifts of the machine move both sides of a pair alike."""

    runs: dict[str, dict[int, list[dict[str, Any]]]]  # label -> connections -> one entry a repetition
    warmup_requests: dict[str, int]


def paired_serving(servers: list[Server], body: Path, script: Path, connections: list[int], *, repeat: int,
                   duration: int, warmup: int, server_cpus: str, load_cpus: str, before_stop=None) -> Paired:
    """Start both servers on `server_cpus`, check that they give the same answer, warm each up at the most
    connections, measure, stop them (`before_stop(servers)` first, to read what they counted)."""
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {s.label: {c: [] for c in connections} for s in servers}
    warmed: dict[str, int] = {}
    try:
        for server in servers:
            server.start(server_cpus)
        for server in servers:
            server.wait_ready()
        answers = [predictions(s, payload(1)) for s in servers]
        assert all(a == answers[0] for a in answers), f"the servers disagree: {answers}"
        for server in servers:
            warmed[server.label] = 1 + run_wrk(server.infer_url, body, script, max(connections), warmup,
                                               load_cpus)["requests"]
        for repetition in range(repeat):
            for conns in connections:
                for server in servers[repetition % 2:] + servers[:repetition % 2]:
                    run = measure(server, body, script, conns, duration, load_cpus)
                    runs[server.label][conns].append(run)
                    print(f"  rep {repetition + 1} {conns:>3} conns  {server.label:<24} {run['rps']:>8.0f} req/s  "
                          f"p99 {run['p99_ms']:6.2f} ms  {run['cpu_us_per_request']:6.1f} us CPU/req  "
                          f"load {run['load_1m']:.1f}{'  errors ' + str(run['errors']) if run['errors'] else ''}",
                          flush=True)
        if before_stop is not None:
            before_stop(servers)
    finally:
        for server in servers:
            server.stop()
    return Paired(runs, warmed)


def paired_cell(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of each side and the medians of the per-repetition ratios a/b (req/s, p99, CPU per request)."""
    import statistics

    def ratio(metric: str) -> float:
        return statistics.median(x[metric] / y[metric] for x, y in zip(a, b))

    def medians(runs: list[dict[str, Any]]) -> dict[str, float]:
        return {m: statistics.median(r[m] for r in runs) for m in ("rps", "p50_ms", "p99_ms", "cpu_us_per_request")}
    loads = [r["load_1m"] for r in a + b]
    return {"a": medians(a), "b": medians(b), "rps_ratio_paired": ratio("rps"), "p99_ratio_paired": ratio("p99_ms"),
            "cpu_per_request_ratio_paired": ratio("cpu_us_per_request"), "load_1m": [min(loads), max(loads)],
            "errors": sum(r["errors"] for r in a + b)}


def bench_model(servers: list[Server], row_counts: list[int], plan: dict[str, tuple[list[int], int]],
                args: argparse.Namespace, work: Path, script: Path) -> list[dict[str, Any]]:
    """The raw runs of one model (see summary.py for their form); each server at the connection counts and for
    the repetitions `plan` gives it."""
    runs: list[dict[str, Any]] = []
    connections = sorted({c for counts, _ in plan.values() for c in counts})
    for rows in row_counts:
        body = payload(rows)
        body_file = work / f"body-{rows}.json"
        body_file.write_text(json.dumps(body))
        answers = {s.label: predictions(s, body) for s in servers}
        first = next(iter(answers.values()))
        if any(a != first for a in answers.values()):
            raise RuntimeError(f"servers disagree on the predictions for {rows} rows: {answers}")
        for server in servers:
            run_wrk(server.infer_url, body_file, script, max(plan[server.label][0]), args.warmup, args.load_cpus)
        for repetition in range(max(repeat for _, repeat in plan.values())):
            order = servers[repetition % len(servers):] + servers[:repetition % len(servers)]
            for conns in connections:
                for server in order:
                    counts, repeat = plan[server.label]
                    if conns not in counts or repetition >= repeat:
                        continue
                    result = run_wrk(server.infer_url, body_file, script, conns, args.duration, args.load_cpus)
                    runs.append({"repetition": repetition + 1, "server": server.label, "kind": server.kind,
                                 "rows": rows, "connections": conns, **result})
                    print(f"  {rows:>2} rows {conns:>3} conns rep {repetition + 1}  {server.label:<40} "
                          f"{result['rps']:>8.0f} req/s  p50 {result['p50_ms']:.2f} ms  p99 {result['p99_ms']:.2f} ms"
                          f"{'  errors ' + str(result['errors']) if result['errors'] else ''}", flush=True)
    return runs


def rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


def bench_one_model(key: str, work: Path, data: Path, script: Path, waits: list[float], args: argparse.Namespace
                    ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Train `key`, start its servers, measure them, stop them. Returns the model's entry of the results (its
    servers, runtimes, raw runs) and its cells and targets in each comparison (by label); prints the tables."""
    print(f"\n== {key}: {MODELS[key]['estimator']['class']} {MODELS[key]['estimator']['params']} ==", flush=True)
    wall = {"start": time.monotonic()}
    uri, version_dir, mlserver_dir = build_model(work, key, data)
    if not (version_dir / "model.onnx").exists():
        raise RuntimeError(f"the trainer wrote no model.onnx for {key}: comparison (b) needs one")
    wall["trained"] = time.monotonic()
    servers = servers_for(uri, version_dir, mlserver_dir, work / key, waits)
    try:
        for server in servers:
            server.start(args.server_cpus)
        for server in servers:
            server.wait_ready()
        wall["ready"] = time.monotonic()
        print(f"  {len(servers)} servers ready in {wall['ready'] - wall['trained']:.0f} s", flush=True)
        runtimes = {s.label: modelloop_runtime(s, version_dir) for s in servers if s.kind == MODELLOOP}
        auto_is = resolve_auto(servers)
        for label in auto_is:
            print(f"  {label} serves exactly as {auto_is[label]} (same V2 model metadata): measured once", flush=True)
            next(s for s in servers if s.label == label).stop()
        shown = {c: comparison_servers(c, servers, auto_is) for c in COMPARISONS}
        plan = measurement_plan(
            primary=[m for c in COMPARISONS if not c.secondary for m in shown[c].values()],
            secondary=[m for c in COMPARISONS if c.secondary for m in shown[c].values()],
            connections=args.connection_counts, repeat=args.repeat,
            secondary_connections=args.secondary_connection_counts, secondary_repeat=args.secondary_repeat)
        runs = bench_model([s for s in servers if s.label in plan], args.row_counts, plan, args, work / key, script)
        wall["measured"] = time.monotonic()
    finally:
        for server in servers:
            server.stop()
    wall["stopped"] = time.monotonic()
    by_comparison = {}
    for comparison in COMPARISONS:
        counts, repeat = common_plan(plan, shown[comparison].values(), args.connection_counts)
        cells = summarise_cells(comparison_runs(runs, shown[comparison], counts, repeat))
        targets = check_targets(cells, **MODELS[key]["target"])
        print(f"\n{key}, {format_comparison(comparison.comparison, comparison.what_it_compares, cells, targets)}",
              flush=True)
        by_comparison[comparison.comparison] = rounded({"servers": shown[comparison], "connections": counts,
                                                        "repetitions": repeat, "cells": cells, "targets": targets})
    model = rounded({
        "estimator": MODELS[key]["estimator"],
        "modelloop_runtime": runtimes,
        "runtime_auto": {s.label: {"measured_as": auto_is.get(s.label)} for s in servers
                         if s.kind == MODELLOOP and s.config["runtime"] == "auto"},
        "mlserver_runtimes": {"sklearn": "mlserver_sklearn.SKLearnModel, the same estimator saved with joblib",
                              "onnx": "mlserver_onnx.OnnxModel (bench/server/mlserver_onnx.py), the version's "
                                      "model.onnx"},
        "servers": {s.label: {"kind": s.kind, **s.config, "measured": s.label in plan} for s in servers},
        "wall_s": {"training": wall["trained"] - wall["start"], "start_up": wall["ready"] - wall["trained"],
                   "measuring": wall["measured"] - wall["ready"], "shut_down": wall["stopped"] - wall["measured"]},
        "repetitions": runs,
    })
    return model, by_comparison


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--connections", default="1,8,64")
    parser.add_argument("--secondary-connections", default="1,64",
                        help="connection counts of the secondary comparison (b), among --connections (all of "
                             "them when it names none)")
    parser.add_argument("--rows", default="1,16", help="rows per request")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions of every cell; the median is reported")
    parser.add_argument("--secondary-repeat", type=int, default=2,
                        help="repetitions of the secondary comparison (b) (at most --repeat)")
    parser.add_argument("--duration", type=int, default=5, help="seconds per measurement (wrk takes whole seconds)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per server and payload")
    parser.add_argument("--batch-waits-ms", help="modelloop-serve's --max-batch-wait-ms values, comma-separated "
                                                 "(default: the ModelDeployment default)")
    parser.add_argument("--server-cpus", default="1", help="taskset CPU list for every server")
    parser.add_argument("--load-cpus", default="0", help="taskset CPU list for wrk")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"results file (default {RESULTS})")
    args = parser.parse_args()
    keys = args.models.split(",")
    unknown = [k for k in keys if k not in MODELS]
    if unknown:
        parser.error(f"--models {','.join(unknown)}: unknown; choose among {', '.join(MODELS)}")
    if min(args.repeat, args.secondary_repeat, args.duration, args.warmup) < 1:
        parser.error("--repeat, --secondary-repeat, --duration and --warmup must be at least 1")
    args.connection_counts = [int(c) for c in args.connections.split(",")]
    args.secondary_connection_counts = [int(c) for c in args.secondary_connections.split(",")]
    args.row_counts = [int(r) for r in args.rows.split(",")]
    from modelloop.api.deployment import ServerSpec

    default_wait = ServerSpec().max_batch_wait_ms
    waits = [float(w) for w in args.batch_waits_ms.split(",")] if args.batch_waits_ms else [default_wait]

    ensure_tools()
    ensure_mlserver_venv()
    work = Path(tempfile.mkdtemp(prefix="modelloop-bench-"))
    script = work / "post.lua"
    script.write_text(WRK_SCRIPT)
    data = work / "data.csv"
    dataset(data)
    report: dict[str, Any] = {
        "benchmark": "modelloop-serve vs MLServer 1.7.1 (V2 REST infer), three comparisons",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_info(),
        "method": {
            "load_tool": "wrk (1 thread, keep-alive), POST with a Lua script",
            "duration_s": args.duration, "warmup_s": args.warmup, "repetitions": args.repeat,
            "secondary_repetitions": min(args.secondary_repeat, args.repeat),
            "server_cpus": args.server_cpus, "load_cpus": args.load_cpus, "connections": args.connection_counts,
            "secondary_connections": args.secondary_connection_counts,
            "rows_per_request": args.row_counts,
            "payload": f"V2 infer, one FP64 input of shape [rows, {FEATURES}]",
            "dataset": f"make_classification, 5000 rows, {FEATURES} numeric features, random_state 0",
            "order": "per model: all its servers up; per payload: prediction check, warm-up of each server at its "
                     "highest connection count; then per repetition, per connection count, each server measured "
                     "there in turn (the order rotates by one per repetition)",
            "summary": "per comparison, cell and server: the median over the repetitions of req/s, of p50 and of "
                       "p99 (each metric's own median); best config = highest median req/s",
            "ratios": "ours / best MLServer config of the cell: req/s ratio (higher is better), p99 ratio "
                      "(lower is better)",
            "modelloop_default_max_batch_wait_ms": default_wait, "modelloop_batch_waits_ms": waits,
            "runtime_auto": "a modelloop-serve --runtime auto server whose V2 model metadata equals that of the "
                            "sklearn or onnx server with the same batch wait is that server: comparison (c) uses "
                            "its measurements (models.<model>.runtime_auto names it)",
        },
        "comparisons": [{"comparison": c.comparison, "what_it_compares": c.what_it_compares,
                         "modelloop_runtime": c.modelloop_runtime,
                         "mlserver_runtime": MLSERVER_RUNTIMES[c.mlserver_runtime],
                         "secondary": c.secondary, "models": {}} for c in COMPARISONS],
        "models": {},
    }
    for key in keys:
        model, by_comparison = bench_one_model(key, work, data, script, waits, args)
        report["models"][key] = model
        for entry in report["comparisons"]:
            entry["models"][key] = by_comparison[entry["comparison"]]
    report["machine"]["load_average_at_end"] = list(os.getloadavg())
    report["commit"] = commit_measured()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.output}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
