"""What the per-minute served counters (modelloop_server.served, read at /served) add to an inference request's
bookkeeping: before, `_http` recorded the Prometheus counters (ServerMetrics.observe_request) and the handler made
the header dict; now `_http` also makes that dict (once: the handler reuses it) to look for X-Modelloop-Shadow,
and counts the request in the ServedWindow.

    .venv/bin/python bench/served/run.py [--calls 20000]

Two measures of the same loops: nanoseconds per call (timeit, the best of 25 rounds in which the loops take turns:
other work on the machine only adds time, and on this shared machine it still moves the result by tens of percent), and instructions per call under valgrind's callgrind (counted only while a loop runs,
`callgrind_control -i on|off`, so imports and warm-up are left out; other work does not move it; skipped without
valgrind). An empty loop's count is subtracted from both. Results: bench/results/served.json, with the commit.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import timeit
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "operator"), str(ROOT / "model-server")]
from bench.measured import run_facts  # noqa: E402
from modelloop_server.app import _headers  # noqa: E402
from modelloop_server.metrics import LATENCY_BUCKETS, ServerMetrics  # noqa: E402
from modelloop_server.served import ServedWindow  # noqa: E402
from modelloop_server.shadow import SHADOW_HEADER  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "served.json"
ROUTE = "/v2/models/{name}/infer"
HEADERS = [(b"host", b"127.0.0.1:8080"), (b"accept", b"*/*"), (b"accept-encoding", b"gzip, deflate"),
           (b"connection", b"keep-alive"), (b"user-agent", b"python-httpx/0.28.1"), (b"content-length", b"98"),
           (b"content-type", b"application/json")]  # what httpx sends with a 1-row V2 request


def loops(calls: int) -> dict[str, Callable[[], None]]:
    metrics, window = ServerMetrics(), ServedWindow(LATENCY_BUCKETS)

    def empty() -> None:
        for _ in range(calls):
            pass

    def before() -> None:
        for _ in range(calls):
            scope = {"headers": HEADERS}
            dict(scope["headers"])  # the handler's header dict
            metrics.observe_request(ROUTE, 200, 0.003)

    def after() -> None:
        for _ in range(calls):
            scope = {"headers": HEADERS}
            shadow = SHADOW_HEADER in _headers(scope)  # _http
            _headers(scope)  # the handler: the same dict
            metrics.observe_request(ROUTE, 200, 0.003)
            window.observe(200, 0.003, shadow)

    def observe() -> None:
        for _ in range(calls):
            window.observe(200, 0.003, False)
    return {"empty": empty, "before": before, "after": after, "observe": observe}


def child(calls: int) -> None:
    """Under callgrind: run the loop named on each stdin line, answer `done`."""
    found = loops(calls)
    for loop in found.values():  # warm-up (counting is off)
        loop()
    print("ready", flush=True)
    for line in sys.stdin:
        found[line.strip()]()
        print("done", flush=True)


def instructions(calls: int) -> dict[str, float] | None:
    if not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        return None
    out = Path(tempfile.mkdtemp(prefix="served-bench-"))
    process = subprocess.Popen(["valgrind", "--tool=callgrind", "--instr-atstart=no",
                                f"--callgrind-out-file={out}/callgrind.%p", sys.executable, __file__, "--child",
                                str(calls)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=(out / "valgrind.log").open("w"), text=True, env={**os.environ,
                                                                                       "PYTHONHASHSEED": "0"})

    def control(*args: str) -> None:
        subprocess.run(["callgrind_control", *args, str(process.pid)], check=True, capture_output=True)
    counts: dict[str, list[float]] = {}
    try:
        assert process.stdout.readline().startswith("ready")
        for _ in range(3):
            for name in ("empty", "before", "after", "observe"):
                control("-z")
                control("-i", "on")
                process.stdin.write(name + "\n")
                process.stdin.flush()
                assert process.stdout.readline().startswith("done")
                control("-i", "off")
                control("-d", name)
                dump = max(out.glob(f"callgrind.{process.pid}.*"), key=lambda p: p.stat().st_mtime)
                total = int(re.search(r"^totals: (\d+)", dump.read_text(), re.M).group(1))
                counts.setdefault(name, []).append(total / calls)
    finally:
        process.stdin.close()
        process.wait(timeout=60)
        shutil.rmtree(out, ignore_errors=True)
    empty = min(counts.pop("empty"))
    return {name: round(min(values) - empty) for name, values in counts.items()}


def nanoseconds(calls: int, rounds: int = 25) -> dict[str, float]:
    """The best of `rounds` rounds, the loops taking turns in each, so that a busy spell of the machine falls on
    all of them."""
    found = loops(calls)
    times: dict[str, list[float]] = {name: [] for name in found}
    for _ in range(rounds):
        for name, loop in found.items():
            times[name].append(timeit.timeit(loop, number=1))
    best = {name: min(values) / calls * 1e9 for name, values in times.items()}
    empty = best.pop("empty")
    return {name: round(value - empty) for name, value in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    facts = run_facts()
    result: dict = {"benchmark": "per-request cost of the served counters (bench/served/run.py)", **facts,
                    "calls": args.calls, "nanoseconds_per_call": nanoseconds(args.calls)}
    counted = instructions(args.calls)
    result["instructions_per_call"] = counted if counted is not None else "not counted: no valgrind"
    for measure in ("nanoseconds_per_call", "instructions_per_call"):
        values = result[measure]
        if isinstance(values, dict):
            values["added"] = values["after"] - values["before"]
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("nanoseconds_per_call", "instructions_per_call")}, indent=2))


if __name__ == "__main__":
    main()
