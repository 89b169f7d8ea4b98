"""What the server's protections cost: modelloop-serve today against modelloop-serve before them.

    .venv/bin/python bench/limits/run.py [--repeat 3] [--duration 5] [--connections 1,8,64] [--models rf,logreg]

The reference is commit ef0c679, the last one before issue 11 added to the server: digests pinned by the
operator and checked before loading, the exact skops type list, the concurrency and queue limits (503 with
Retry-After), header and body read timeouts, the row cap and the sketch on its own port. Both servers use
scikit-learn (today's with --runtime sklearn: ONNX came later and is measured by bench/server), so the
difference is the protections, not the model runtime.

1. A git worktree of the reference commit in bench/.ref-ef0c679 (made when missing).
2. Each version of modelloop trains its own model with its own trainer: same data, estimator, params and
   seed, into its own file:// store. The reference runs from the worktree's sources (PYTHONPATH) in this venv.
3. Today's server runs with its defaults and the digests pinned as the operator pins them.
4. Both pinned to one CPU, wrk on the other; for each model and connection count, 1-row V2 requests,
   --repeat runs with the two servers interleaved (which one goes first alternates), medians reported.
   Prints the req/s and p99 of today over the reference and writes bench/results/limits.json. Target
   (issue 11): the protections cost at most 5% of req/s (ratio >= 0.95); a ratio above 1.05 is noise,
   reported as such (`within_5_percent_both_ways`).

The machine is shared: a run that other work slows moves req/s by far more than 5%. So each run also
records the 1-minute load average and the server's own CPU time per request (user + system of the server
process over the run, from /proc, divided by the requests answered): what the protections add to each
request, which other processes change much less than req/s. Per cell, besides the ratio of the medians,
the median of the per-repetition ratios (the two runs of a repetition are back to back, so slow drifts of
the load cancel out) and the ratio of the median CPU times per request.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench" / "server"))
import run as server_bench  # noqa: E402  (bench/server/run.py: Server, wrk, payload, dataset; one home)
sys.path.insert(0, str(ROOT))
from bench.measured import commit_measured  # noqa: E402

REFERENCE = "ef0c679"
RESULTS = ROOT / "bench" / "results" / "limits.json"
MODELS = {key: server_bench.MODELS[key] for key in ("rf", "logreg")}
TARGET = 0.05


def reference_tree() -> Path:
    tree = ROOT / "bench" / f".ref-{REFERENCE}"
    if not (tree / "model-server").is_dir():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), REFERENCE], check=True,
                       capture_output=True)
    return tree


def train(key: str, data: Path, output: Path, pythonpath: str | None) -> str:
    """Train with the trainer of the tree on `pythonpath` (this checkout's when None); the version's URI."""
    code = ("import json, sys\nfrom modelloop.training.trainer import train\n"
            "spec = json.loads(sys.argv[1])\ntrain(spec, version=1, identity={'name': 'bench'})\n")
    spec = {"dataset": {"uri": f"file://{data}", "target": "label"}, "estimator": MODELS[key]["estimator"],
            "output": {"uri": f"file://{output}"}}
    env = {**os.environ, **({"PYTHONPATH": pythonpath} if pythonpath else {})}
    subprocess.run([sys.executable, "-c", code, json.dumps(spec)], env=env, check=True, capture_output=True)
    return f"file://{output}/v1"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--connections", default="1,8,64")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--server-cpus", default="1")
    parser.add_argument("--load-cpus", default="0")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    server_bench.ensure_tools()
    machine = server_bench.machine_info()  # (its load average is the one at the start)
    from modelloop.artifacts import sha256_bytes

    tree = reference_tree()
    ref_path = f"{tree / 'operator'}{os.pathsep}{tree / 'model-server'}"
    connections = [int(c) for c in args.connections.split(",")]
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="modelloop-limits-") as tmp:
        work = Path(tmp)
        data = work / "data.csv"
        server_bench.dataset(data)
        script = work / "wrk.lua"
        script.write_text(server_bench.WRK_SCRIPT)
        body = work / "body.json"
        body.write_text(json.dumps(server_bench.payload(1)))
        for key in args.models.split(","):
            now_uri = train(key, data, work / key / "now", None)
            ref_uri = train(key, data, work / key / "ref", ref_path)
            version = work / key / "now" / "v1"
            pins = ["--model-sha256", json.loads((version / "metadata.json").read_text())["model"]["sha256"],
                    "--metadata-sha256", sha256_bytes((version / "metadata.json").read_bytes())]
            now = server_bench.modelloop_server("today", now_uri, work / key, ["--runtime", "sklearn", *pins],
                                                {"commit": "HEAD"})
            port = server_bench.free_port()
            ref = server_bench.Server(
                f"before ({REFERENCE})", server_bench.MODELLOOP, {"commit": REFERENCE}, port,
                ["env", f"PYTHONPATH={ref_path}", sys.executable, "-m", "modelloop_server.cli", "--model-uri", ref_uri,
                 "--model-name", server_bench.MODEL_NAME, "--host", "127.0.0.1", "--port", str(port),
                 "--log-level", "warning"], ROOT, work / key / "reference.log")
            paired = server_bench.paired_serving(
                [now, ref], body, script, connections, repeat=args.repeat, duration=args.duration,
                warmup=args.warmup, server_cpus=args.server_cpus, load_cpus=args.load_cpus)
            runs = paired.runs
            results[key] = {}
            for conns in connections:
                cell = {label: {m: statistics.median(r[m] for r in per[conns])
                                for m in ("rps", "p50_ms", "p99_ms", "cpu_us_per_request")}
                        | {"errors": sum(r["errors"] for r in per[conns]), "runs": per[conns]}
                        for label, per in runs.items()}
                today, before = cell[now.label], cell[ref.label]
                cell["rps_ratio"] = today["rps"] / before["rps"]
                cell["rps_ratio_paired"] = statistics.median(
                    t["rps"] / b["rps"] for t, b in zip(today["runs"], before["runs"]))
                cell["cpu_per_request_ratio"] = today["cpu_us_per_request"] / before["cpu_us_per_request"]
                cell["p99_ratio"] = today["p99_ms"] / before["p99_ms"]
                cell["load_1m"] = [min(r["load_1m"] for r in today["runs"] + before["runs"]),
                                   max(r["load_1m"] for r in today["runs"] + before["runs"])]
                cell["within_target"] = cell["rps_ratio"] >= 1 - TARGET  # the protections cost at most 5%
                cell["within_5_percent_both_ways"] = abs(cell["rps_ratio"] - 1) <= TARGET
                results[key][conns] = cell
    print(f"{'model':<7} {'conns':>5} {'today req/s':>12} {'before req/s':>13} {'ratio':>6} {'paired':>7} "
          f"{'today p99':>10} {'before p99':>11} {'ratio':>6} {'CPU us/req':>15} {'ratio':>6} {'load':>9}")
    for key, cells in results.items():
        for conns, c in cells.items():
            t, b = c["today"], c[f"before ({REFERENCE})"]
            print(f"{key:<7} {conns:>5} {t['rps']:>12.0f} {b['rps']:>13.0f} {c['rps_ratio']:>6.3f} "
                  f"{c['rps_ratio_paired']:>7.3f} {t['p99_ms']:>8.2f}ms {b['p99_ms']:>9.2f}ms {c['p99_ratio']:>6.3f} "
                  f"{t['cpu_us_per_request']:>7.1f}/{b['cpu_us_per_request']:<7.1f} {c['cpu_per_request_ratio']:>6.3f} "
                  f"{c['load_1m'][0]:>4.1f}-{c['load_1m'][1]:<4.1f}")
    met = all(c["within_target"] for cells in results.values() for c in cells.values())
    print(f"req/s at least {1 - TARGET:.2f} of the reference's in every cell: {'yes' if met else 'no'}; "
          f"within {TARGET:.0%} both ways: "
          f"{'yes' if all(c['within_5_percent_both_ways'] for v in results.values() for c in v.values()) else 'no'}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({
        "benchmark": f"modelloop-serve today vs {REFERENCE} (before the server's protections), scikit-learn runtime",
        "commit": commit_measured(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine | {"load_average_at_end": list(os.getloadavg())},
        "method": {"load_tool": "wrk, 1 thread, keep-alive", "rows_per_request": 1, "duration_s": args.duration,
                   "repeat": args.repeat, "server_cpus": args.server_cpus, "load_cpus": args.load_cpus,
                   "models": {key: MODELS[key] for key in args.models.split(",")},
                   "target": f"req/s at least {1 - TARGET:.2f} of the reference's (rps_ratio: the ratio of "
                             "the medians)",
                   "also": "rps_ratio_paired: median of the per-repetition ratios; cpu_per_request_ratio: "
                           "ratio of the median server CPU time per request (user + system, /proc)"},
        "results": {k: {str(c): v for c, v in cells.items()} for k, cells in results.items()},
        "within_target": met}, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
