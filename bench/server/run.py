"""modelloop-serve against MLServer 1.7.1: same model object, same payloads, same load tool, same CPU.

    .venv/bin/python bench/server/run.py [--duration 5] [--connections 1,8,32] [--rows 1,16] [--models rf,logreg]

What it does:
1. Trains each model with modelloop's trainer on one 16-feature numeric dataset and writes the version
   (model.skops + metadata.json) to a file:// folder; loads that very model object back and saves it with
   joblib for MLServer's scikit-learn runtime, so both servers hold the same fitted estimator.
2. Creates MLServer's own venv at bench/.venv-mlserver when missing (mlserver 1.7.1, mlserver-sklearn 1.7.1,
   uvloop<0.22: newer uvloop crashes its inference worker).
3. Starts every server at once, each pinned with taskset to the same CPU (--server-cpus), and wrk on another
   (--load-cpus):
   - modelloop-serve with --max-batch-wait-ms 0 (continuous batching, no waiting),
   - modelloop-serve with the ModelDeployment default batch wait (ServerSpec.max_batch_wait_ms),
   - MLServer with parallel_workers 0 (inference in the server process),
   - MLServer with its default parallel_workers (1: one inference worker process).
   MLServer runs with debug=false (no access log), as one would in production.
4. Checks every server answers the payload with the same predictions, then for each payload (V2 infer, one
   [n, 16] FP64 input) and connection count runs wrk once per server, interleaved so that background load
   on the machine hits all servers alike, after a warm-up run.
5. Prints req/s, p50, p99 and errors with the ratios modelloop/MLServer, and writes bench/results/server.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
MLSERVER_VENV = ROOT / "bench" / ".venv-mlserver"
MLSERVER_PACKAGES = ["mlserver==1.7.1", "mlserver-sklearn==1.7.1", "uvloop<0.22"]
RESULTS = ROOT / "bench" / "results" / "server.json"
FEATURES = 16
MODEL_NAME = "bench"
MODELS = {
    "rf": {"class": "sklearn.ensemble.RandomForestClassifier", "params": {"n_estimators": 50, "max_depth": 8}},
    "logreg": {"class": "sklearn.linear_model.LogisticRegression", "params": {"max_iter": 1000}},
}
WRK_SCRIPT = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.body = f:read("*a")
f:close()

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT {\"requests\": %d, \"duration_us\": %d, \"p50_us\": %d, \"p99_us\": %d, \"status_errors\": %d, " ..
    "\"socket_errors\": %d}\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), e.status,
    e.connect + e.read + e.write + e.timeout))
end
"""


@dataclass
class Server:
    label: str
    kind: str  # modelloop | mlserver
    port: int
    command: list[str]
    cwd: Path
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None

    @property
    def infer_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v2/models/{MODEL_NAME}/infer"

    def start(self, cpus: str) -> None:
        self.process = subprocess.Popen(["taskset", "-c", cpus, *self.command], cwd=self.cwd,
                                        env={**os.environ, **self.env}, stdout=self.log.open("wb"),
                                        stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.label} exited ({self.process.returncode}); see {self.log}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/v2/models/{MODEL_NAME}/ready", timeout=2).status_code \
                        == 200:
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


def ensure_mlserver_venv() -> Path:
    python = MLSERVER_VENV / "bin" / "python"
    if not (MLSERVER_VENV / "bin" / "mlserver").exists():
        print(f"creating {MLSERVER_VENV} ({', '.join(MLSERVER_PACKAGES)})", flush=True)
        subprocess.run(["python3.11", "-m", "venv", str(MLSERVER_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *MLSERVER_PACKAGES], check=True)
    return python


def dataset(path: Path) -> pd.DataFrame:
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=5000, n_features=FEATURES, n_informative=8, random_state=0)
    frame = pd.DataFrame(x, columns=[f"f{i:02d}" for i in range(FEATURES)])
    frame["label"] = y
    frame.to_csv(path, index=False)
    return frame


def build_model(work: Path, key: str, data: Path) -> tuple[str, Path]:
    """Train with modelloop's trainer; save the loaded model object with joblib for MLServer too."""
    import joblib

    from modelloop.artifacts import load_model
    from modelloop.training.trainer import train

    output = work / key / "out"
    train({"dataset": {"uri": f"file://{data}", "target": "label"}, "estimator": MODELS[key],
           "output": {"uri": f"file://{output}"}}, version=1, identity={"name": MODEL_NAME})
    uri = f"file://{output}/v1"
    model = load_model(uri).model
    mlserver_dir = work / key / "mlserver"
    (mlserver_dir / "model").mkdir(parents=True)
    joblib.dump(model, mlserver_dir / "model" / "model.joblib")
    return uri, mlserver_dir


def modelloop_server(label: str, uri: str, work: Path, extra: list[str]) -> Server:
    """`work`: this model's folder (logs go there)."""
    port = free_port()
    return Server(label, "modelloop", port,
                  [sys.executable, "-m", "modelloop_server.cli", "--model-uri", uri, "--model-name", MODEL_NAME,
                   "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", *extra],
                  ROOT, work / f"{label}.log")


def mlserver_server(label: str, mlserver_dir: Path, work: Path, parallel_workers: int | None) -> Server:
    """`work`: this model's folder (the server's model repository and log go there)."""
    port = free_port()
    folder = work / label
    shutil.copytree(mlserver_dir, folder)
    settings: dict[str, Any] = {"http_port": port, "grpc_port": free_port(), "metrics_port": free_port(),
                                "debug": False, "host": "127.0.0.1"}
    if parallel_workers is not None:
        settings["parallel_workers"] = parallel_workers
    (folder / "settings.json").write_text(json.dumps(settings))
    (folder / "model" / "model-settings.json").write_text(json.dumps({
        "name": MODEL_NAME, "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": "v1"}}))
    return Server(label, "mlserver", port, [str(MLSERVER_VENV / "bin" / "mlserver"), "start", str(folder)],
                  folder, work / f"{label}.log")


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per measurement (wrk takes whole seconds)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per server and payload")
    parser.add_argument("--connections", default="1,8,32")
    parser.add_argument("--rows", default="1,16", help="rows per request")
    parser.add_argument("--models", default="rf,logreg")
    parser.add_argument("--server-cpus", default="1", help="taskset CPU list for every server")
    parser.add_argument("--load-cpus", default="0", help="taskset CPU list for wrk")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is required: apt-get install -y wrk")
    connections = [int(c) for c in args.connections.split(",")]
    row_counts = [int(r) for r in args.rows.split(",")]
    ensure_mlserver_venv()
    from modelloop.api.deployment import ServerSpec

    default_wait = ServerSpec().max_batch_wait_ms
    work = Path(tempfile.mkdtemp(prefix="modelloop-bench-"))
    script = work / "post.lua"
    script.write_text(WRK_SCRIPT)
    data = work / "data.csv"
    dataset(data)
    report: dict[str, Any] = {
        "benchmark": "modelloop-serve vs MLServer 1.7.1 (V2 REST infer)",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "load_average_at_start": list(os.getloadavg())},
        "method": {"load_tool": "wrk 4.1 (1 thread, keep-alive), POST with a Lua script",
                   "duration_s": args.duration, "warmup_s": args.warmup, "server_cpus": args.server_cpus,
                   "load_cpus": args.load_cpus, "connections": connections, "rows_per_request": row_counts,
                   "payload": f"V2 infer, one FP64 input of shape [rows, {FEATURES}]",
                   "order": "per cell, each server in turn (interleaved)"},
        "models": {},
    }
    for key in args.models.split(","):
        uri, mlserver_dir = build_model(work, key, data)
        model_work = work / key
        servers = [
            modelloop_server("modelloop(wait=0)", uri, model_work, ["--max-batch-wait-ms", "0"]),
            modelloop_server(f"modelloop(wait={default_wait:g}ms)", uri, model_work, []),
            mlserver_server("mlserver(pw=0)", mlserver_dir, model_work, 0),
            mlserver_server("mlserver(pw=default)", mlserver_dir, model_work, None),
        ]
        try:
            for server in servers:
                server.start(args.server_cpus)
            for server in servers:
                server.wait_ready()
            report["models"][key] = bench_model(key, servers, row_counts, connections, args, work, script)
        finally:
            for server in servers:
                server.stop()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.output}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


def bench_model(key: str, servers: list[Server], row_counts: list[int], connections: list[int],
                args: argparse.Namespace, work: Path, script: Path) -> dict[str, Any]:
    print(f"\n== {key}: {MODELS[key]['class']} {MODELS[key]['params']} ==", flush=True)
    results: list[dict[str, Any]] = []
    for rows in row_counts:
        body = payload(rows)
        body_file = work / f"body-{rows}.json"
        body_file.write_text(json.dumps(body))
        answers = {s.label: predictions(s, body) for s in servers}
        first = next(iter(answers.values()))
        if any(a != first for a in answers.values()):
            raise RuntimeError(f"servers disagree on the predictions for {rows} rows: {answers}")
        for server in servers:
            run_wrk(server.infer_url, body_file, script, max(connections), args.warmup, args.load_cpus)
        for conns in connections:
            for server in servers:
                result = run_wrk(server.infer_url, body_file, script, conns, args.duration, args.load_cpus)
                results.append({"server": server.label, "rows": rows, "connections": conns, **result})
    print_table(results, servers)
    ratios = ratio_rows(results)
    return {"estimator": MODELS[key], "results": results, "ratios": ratios}


def ratio_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per cell: best modelloop config and each modelloop config over the best MLServer config (req/s)."""
    cells = sorted({(r["rows"], r["connections"]) for r in results})
    out = []
    for rows, conns in cells:
        cell = [r for r in results if r["rows"] == rows and r["connections"] == conns]
        best_ml = max((r for r in cell if r["server"].startswith("mlserver")), key=lambda r: r["rps"])
        entry: dict[str, Any] = {"rows": rows, "connections": conns, "best_mlserver": best_ml["server"]}
        for r in cell:
            if r["server"].startswith("modelloop"):
                entry[f"{r['server']} / best mlserver rps"] = round(r["rps"] / best_ml["rps"], 2)
                entry[f"{r['server']} / best mlserver p99"] = round(r["p99_ms"] / best_ml["p99_ms"], 2)
        out.append(entry)
    return out


def print_table(results: list[dict[str, Any]], servers: list[Server]) -> None:
    print(f"{'rows':>4} {'conns':>5}  {'server':<24} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}"
          f"  {'rps vs best MLServer':>20}")
    cells = sorted({(r["rows"], r["connections"]) for r in results})
    for rows, conns in cells:
        cell = [r for r in results if r["rows"] == rows and r["connections"] == conns]
        best_ml = max(r["rps"] for r in cell if r["server"].startswith("mlserver"))
        for r in cell:
            ratio = f"x{r['rps'] / best_ml:.2f}" if r["server"].startswith("modelloop") else ""
            print(f"{rows:>4} {conns:>5}  {r['server']:<24} {r['rps']:>9.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
                  f"{r['errors']:>6}  {ratio:>20}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
