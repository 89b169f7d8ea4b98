"""modelloop-serve past its limits: wrk with 256 connections against a queue limit of 64.

    .venv/bin/python bench/overload/run.py [--duration 10] [--connections 256] [--max-queue 64]

What it shows (issue 11, docs/server.md "Limits"): a server offered far more concurrent requests than it
admits answers the excess at once with 503 and `Retry-After`, instead of letting them wait into client
timeouts, and serves normally again as soon as the load drops.

1. Trains a RandomForest (50 trees, depth 8, 16 features) with modelloop's trainer into a file:// store:
   served through scikit-learn (--runtime sklearn: about 4 ms per prediction call; through onnxruntime the
   same forest takes 20 us and HTTP is the limit), so one server CPU answers a few hundred requests per
   second and 256 connections overflow the queue for sure. Batching is off (--max-batch-size 1): every
   request is one call, the slowest case for the queue.
2. Starts modelloop-serve pinned to one CPU with --max-queue 64 (and the default --max-concurrency),
   runs wrk with --connections on the other CPU for --duration seconds with a Lua script that counts each
   status code and the 503s that carry Retry-After.
3. Then measures how long after wrk stops a single request is answered 200 again (the queue drains
   the requests the closed connections left behind), and runs wrk with 8 connections ("recovery"):
   every request must be a 200.
4. Prints both phases and writes bench/results/overload.json. Exits 1 when a phase misses its target:
   overload: 503s answered (with Retry-After), no socket timeouts, no status other than 200/503;
   recovery: only 200s.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench" / "server"))
import run as server_bench  # noqa: E402  (bench/server/run.py: tools, ports, dataset, request; one home)
sys.path.insert(0, str(ROOT))
from bench.measured import commit_measured  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "overload.json"
MODEL_NAME = "overload"
ESTIMATOR = server_bench.MODELS["rf"]["estimator"]
WRK_SCRIPT = server_bench.WRK_REQUEST + r"""
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {}; retry_after = 0 end
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status == 503 and (headers["Retry-After"] or headers["retry-after"]) then retry_after = retry_after + 1 end
end

function done(summary, latency, requests)
  local counts, retry = {}, 0
  for _, t in ipairs(threads) do
    for status, n in pairs(t:get("statuses")) do counts[status] = (counts[status] or 0) + n end
    retry = retry + t:get("retry_after")
  end
  local parts = {}
  for status, n in pairs(counts) do table.insert(parts, string.format("\"%d\": %d", status, n)) end
  local e = summary.errors
  io.write(string.format(
    "RESULT {\"requests\": %d, \"duration_us\": %d, \"p50_us\": %d, \"p99_us\": %d, \"max_us\": %d, " ..
    "\"statuses\": {%s}, \"retry_after_503s\": %d, \"connect_errors\": %d, \"read_errors\": %d, " ..
    "\"write_errors\": %d, \"timeouts\": %d}\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    table.concat(parts, ", "), retry, e.connect, e.read, e.write, e.timeout))
end
"""


def train(work: Path) -> str:
    from modelloop.training.trainer import train as train_version

    server_bench.dataset(work / "data.csv")
    train_version({"dataset": {"uri": f"file://{work / 'data.csv'}", "target": "label"}, "estimator": ESTIMATOR,
                   "output": {"uri": f"file://{work / 'out'}"}}, version=1, identity={"name": MODEL_NAME})
    return f"file://{work / 'out'}/v1"


def wrk(url: str, work: Path, connections: int, seconds: int, cpus: str) -> dict[str, Any]:
    script = work / "count.lua"
    script.write_text(WRK_SCRIPT)
    command = ["taskset", "-c", cpus, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
               "-s", str(script), url]
    out = subprocess.run(command, env={**os.environ, "BENCH_BODY": str(work / "body.json")}, capture_output=True,
                         text=True, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    seconds = result["duration_us"] / 1e6
    result["req_per_s"] = round(result["requests"] / seconds, 1)
    result["ok_per_s"] = round(result["statuses"].get("200", 0) / seconds, 1)
    return result


def recovered_after(url: str, body: Path, limit: float = 30.0) -> float:
    """Seconds until one request is answered 200 (the queue still holds what the closed connections sent)."""
    started = time.monotonic()
    content = body.read_bytes()
    while time.monotonic() - started < limit:
        response = httpx.post(url, content=content, headers={"Content-Type": "application/json"}, timeout=10)
        if response.status_code == 200:
            return round(time.monotonic() - started, 3)
        time.sleep(0.01)
    raise RuntimeError(f"no 200 within {limit}s after the overload")


def verdict(phase: str, result: dict[str, Any]) -> list[str]:
    statuses = {int(k): v for k, v in result["statuses"].items()}
    socket_errors = result["connect_errors"] + result["read_errors"] + result["write_errors"] + result["timeouts"]
    misses = []
    if socket_errors:
        misses.append(f"{phase}: {socket_errors} socket errors ({result['timeouts']} timeouts)")
    if phase == "overload":
        if not statuses.get(503):
            misses.append("overload: no 503 answered (the queue never filled?)")
        elif result["retry_after_503s"] != statuses[503]:
            misses.append(f"overload: {statuses[503] - result['retry_after_503s']} 503s without Retry-After")
        if set(statuses) - {200, 503}:
            misses.append(f"overload: statuses other than 200/503: {statuses}")
    elif set(statuses) != {200}:
        misses.append(f"recovery: statuses other than 200: {statuses}")
    return misses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds of each phase")
    parser.add_argument("--connections", type=int, default=256)
    parser.add_argument("--max-queue", type=int, default=64)
    parser.add_argument("--recovery-connections", type=int, default=8)
    parser.add_argument("--server-cpus", default="1")
    parser.add_argument("--load-cpus", default="0")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    server_bench.ensure_tools()

    with tempfile.TemporaryDirectory(prefix="modelloop-overload-") as tmp:
        work = Path(tmp)
        uri = train(work)
        (work / "body.json").write_text(json.dumps(server_bench.payload(1)))
        port = server_bench.free_port()
        server_args = ["--max-queue", str(args.max_queue), "--max-batch-size", "1", "--max-batch-wait-ms", "0",
                       "--runtime", "sklearn", "--log-level", "warning"]
        server = subprocess.Popen(
            ["taskset", "-c", args.server_cpus, sys.executable, "-m", "modelloop_server.cli", "--model-uri", uri,
             "--model-name", MODEL_NAME, "--host", "127.0.0.1", "--port", str(port),
             "--sketch-port", str(server_bench.free_port()), *server_args],
            cwd=ROOT, stdout=(work / "server.log").open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"{base}/v2/health/ready", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"the server did not become ready:\n{(work / 'server.log').read_text()}")
                time.sleep(0.2)
            url = f"{base}/v2/models/{MODEL_NAME}/infer"
            overload = wrk(url, work, args.connections, args.duration, args.load_cpus)
            overload["recovered_after_s"] = recovered_after(url, work / "body.json")
            recovery = wrk(url, work, args.recovery_connections, args.duration, args.load_cpus)
        finally:
            os.killpg(server.pid, signal.SIGINT)
            server.wait(timeout=30)

    misses = verdict("overload", overload) + verdict("recovery", recovery)
    print(f"{'phase':<10} {'conns':>5} {'req/s':>8} {'200/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  statuses")
    for phase, conns, r in (("overload", args.connections, overload),
                            ("recovery", args.recovery_connections, recovery)):
        print(f"{phase:<10} {conns:>5} {r['req_per_s']:>8} {r['ok_per_s']:>8} {r['p50_us'] / 1000:>8.2f} {r['p99_us'] / 1000:>8.2f} "
              f"{r['max_us'] / 1000:>8.2f}  {r['statuses']} (503 with Retry-After: {r['retry_after_503s']}, "
              f"timeouts: {r['timeouts']})")
    print(f"first 200 after the overload: {overload['recovered_after_s']} s")
    print("targets met" if not misses else "MISSED: " + "; ".join(misses))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({
        "benchmark": "modelloop-serve overload: wrk past the queue limit, then normal load",
        "commit": commit_measured(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_average_at_end": os.getloadavg()},
        "method": {"load_tool": "wrk 4.1, 1 thread, --timeout 10s", "duration_s": args.duration,
                   "server_cpus": args.server_cpus, "load_cpus": args.load_cpus, "estimator": ESTIMATOR,
                   "server_args": server_args, "rows_per_request": 1},
        "overload": {"connections": args.connections, **overload},
        "recovery": {"connections": args.recovery_connections, **recovery},
        "targets_met": not misses, "misses": misses}, indent=2) + "\n")
    sys.exit(1 if misses else 0)


if __name__ == "__main__":
    main()
