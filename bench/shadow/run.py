"""What shadow copies cost the champion: modelloop-serve copying every request (--shadow-fraction 1.0) to a
challenger that is slow (200 ms a request) or down, against the same server copying nothing, in the same run.

    .venv/bin/python bench/shadow/run.py [--repeat 5] [--duration 5] [--connections 1,8,64]

Comparison: one server against itself with and without the copies (like for like: same model, same flags, same
CPU), paired runs (bench/server's harness: back to back, alternating which goes first, medians of the
per-repetition ratios). The slow challenger is a small asyncio HTTP server on the load CPU that answers every
request after 200 ms; "down" is a port nothing listens on. Target (docs/challenger.md): at 64 connections the
copies cost at most 5% of req/s and 10% of p99. Results: bench/results/shadow.json, with the commit measured.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench" / "server"))
import run as server_bench  # noqa: E402  (bench/server/run.py: Server, wrk, the paired harness; one home)
sys.path.insert(0, str(ROOT))
from bench.measured import commit_measured  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "shadow.json"
RPS_TARGET, P99_TARGET, TARGET_CONNECTIONS = 0.95, 1.10, 64
SLOW_SECONDS = 0.2
SLOW_CHALLENGER = """
import asyncio, sys

async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\\r\\n\\r\\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\\r\\n")
                          if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
            await asyncio.sleep(float(sys.argv[2]))
            writer.write(b"HTTP/1.1 200 OK\\r\\ncontent-type: application/json\\r\\ncontent-length: 2\\r\\n\\r\\n{}")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
    print("listening", flush=True)
    await server.serve_forever()

asyncio.run(main())
"""


def shadow_counts(server: server_bench.Server) -> dict[str, float]:
    import httpx

    text = httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=10).text
    return {line.split('outcome="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith("modelloop_server_shadow_copies_total{")}


def bench_mode(mode: str, uri: str, work: Path, body: Path, script: Path, args: argparse.Namespace) -> dict[str, Any]:
    port = server_bench.free_port()
    challenger = None
    if mode == "slow":
        challenger = subprocess.Popen(["taskset", "-c", args.load_cpus, sys.executable, "-c", SLOW_CHALLENGER,
                                       str(port), str(SLOW_SECONDS)], stdout=subprocess.PIPE, text=True)
        assert challenger.stdout is not None and challenger.stdout.readline().strip() == "listening"
    mirrored = server_bench.modelloop_server(f"copies to a {mode} challenger", uri, work,
                                             ["--shadow-to", f"127.0.0.1:{port}", "--shadow-fraction", "1.0"],
                                             {"shadow": mode})
    plain = server_bench.modelloop_server(f"no copies ({mode} run)", uri, work, [], {"shadow": None})
    counts: list[dict[str, float]] = []
    try:
        paired = server_bench.paired_serving(
            [mirrored, plain], body, script, args.connections, repeat=args.repeat, duration=args.duration,
            warmup=args.warmup, server_cpus=args.server_cpus, load_cpus=args.load_cpus,
            before_stop=lambda servers: counts.append(shadow_counts(mirrored)))
    finally:
        if challenger is not None:
            challenger.terminate()
            challenger.wait()
    cells = {}
    for conns in args.connections:
        cell = server_bench.paired_cell(paired.runs[mirrored.label][conns], paired.runs[plain.label][conns])
        cell = {"copies": cell.pop("a"), "no_copies": cell.pop("b"), **cell,
                "runs": {"copies": paired.runs[mirrored.label][conns], "no_copies": paired.runs[plain.label][conns]}}
        cell["within_target"] = cell["rps_ratio_paired"] >= RPS_TARGET and cell["p99_ratio_paired"] <= P99_TARGET
        cells[conns] = cell
    return {"cells": cells, "copies": counts[0] if counts else {}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--connections", default="1,8,64")
    parser.add_argument("--modes", default="slow,down")
    parser.add_argument("--model", default="logreg", choices=sorted(server_bench.MODELS))
    parser.add_argument("--server-cpus", default="1")
    parser.add_argument("--load-cpus", default="0")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.connections = [int(c) for c in args.connections.split(",")]
    server_bench.ensure_tools()
    machine = server_bench.machine_info()
    commit = commit_measured()
    results = {}
    with tempfile.TemporaryDirectory(prefix="modelloop-shadow-") as tmp:
        work = Path(tmp)
        data = work / "data.csv"
        server_bench.dataset(data)
        uri, _, _ = server_bench.build_model(work, args.model, data)
        script = work / "wrk.lua"
        script.write_text(server_bench.WRK_SCRIPT)
        body = work / "body-1.json"
        body.write_text(json.dumps(server_bench.payload(1)))
        for mode in args.modes.split(","):
            print(f"== copies to a {mode} challenger vs no copies ({args.model}, 1-row V2 requests)", flush=True)
            results[mode] = bench_mode(mode, uri, work, body, script, args)
    print(f"\n{'challenger':<10} {'conns':>5} {'copies req/s':>13} {'none req/s':>11} {'ratio':>6} "
          f"{'copies p99':>11} {'none p99':>9} {'ratio':>6} {'CPU/req ratio':>14}  copies by outcome")
    for mode, found in results.items():
        for conns, c in found["cells"].items():
            print(f"{mode:<10} {conns:>5} {c['copies']['rps']:>13.0f} {c['no_copies']['rps']:>11.0f} "
                  f"{c['rps_ratio_paired']:>6.3f} {c['copies']['p99_ms']:>9.2f}ms {c['no_copies']['p99_ms']:>7.2f}ms "
                  f"{c['p99_ratio_paired']:>6.3f} {c['cpu_per_request_ratio_paired']:>14.3f}  "
                  f"{found['copies'] if conns == args.connections[-1] else ''}")
    met = all(found["cells"][TARGET_CONNECTIONS]["within_target"] for found in results.values()
              if TARGET_CONNECTIONS in found["cells"])
    print(f"at {TARGET_CONNECTIONS} connections req/s ratio >= {RPS_TARGET} and p99 ratio <= {P99_TARGET}: "
          f"{'yes' if met else 'no'}")
    report = {
        "benchmark": "shadow copies: modelloop-serve copying every request to a slow or absent challenger vs copying "
                     "nothing (same server, same model, same run)",
        "commit": commit, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine | {"load_average_at_end": list(os.getloadavg())},
        "method": {"model": {args.model: server_bench.MODELS[args.model]["estimator"]}, "fraction": 1.0,
                   "slow_challenger_seconds": SLOW_SECONDS, "server_cpus": args.server_cpus,
                   "load_cpus": args.load_cpus, "repeat": args.repeat, "duration_s": args.duration,
                   "warmup_s": args.warmup, "connections": args.connections,
                   "load_tool": "wrk, 1 thread, keep-alive, bench/server's Lua script, 1-row V2 requests",
                   "ratios": "median over repetitions of copies/no copies of the two back-to-back runs",
                   "target": f"at {TARGET_CONNECTIONS} connections rps_ratio_paired >= {RPS_TARGET} and "
                             f"p99_ratio_paired <= {P99_TARGET}"},
        "results": {mode: {**found, "cells": {str(c): v for c, v in found["cells"].items()}}
                    for mode, found in results.items()},
        "within_target": met,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(server_bench.rounded(report), indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
