"""What the server's protections cost: modelloop-serve today against modelloop-serve before them.

    .venv/bin/python bench/limits/run.py [--reference issue11|issue22] [--repeat 3] [--duration 5]
        [--connections 1,8,64] [--models rf,logreg]

--reference names the commit compared with today (REFERENCES, the one table both scripts read):
- issue11 (the default): ef0c679, the last commit before issue 11 added to the server: digests pinned by the
  operator and checked before loading, the exact skops type list, the concurrency and queue limits (503 with
  Retry-After), header and body read timeouts, the row cap and the sketch on its own port. Both servers use
  scikit-learn (today's with --runtime sklearn: ONNX came later and is measured by bench/server), so the
  difference is the protections, not the model runtime. Target 5%; bench/results/limits.json.
- issue22: 46a16d7, the main just before the first merge of issue 22 (62a1ecf): today adds its bounds (body,
  elements, rows, string lengths and JSON depth checked before decoding, large bodies decoded off the event
  loop, the inference deadline, metadata and artifact bounds at load, windowed prediction series). Both servers
  run with the same flags (--runtime sklearn, --sketch-port and the digests pinned, which 46a16d7's server has
  too), so the difference is the bounds and the smaller server changes merged since, which the results list
  (`git log 46a16d7..HEAD -- model-server/`). Target 3%; bench/results/limits-issue22.json.

1. A git worktree of the reference commit in bench/.ref-<commit> (made when missing).
2. Each version of modelloop trains its own model with its own trainer: same data, estimator, params and
   seed, into its own file:// store. The reference runs from the worktree's sources (PYTHONPATH) in this venv.
3. Today's server runs with its defaults and the digests pinned as the operator pins them (the reference's too
   when it takes today's flags).
4. Both pinned to one CPU, wrk on the other; for each model and connection count, 1-row V2 requests,
   --repeat runs with the two servers interleaved (which one goes first alternates), medians reported.
   Prints the req/s and p99 of today over the reference and writes the reference's results file. Target:
   the change costs at most the reference's target of req/s (ratio >= 1 - target); a ratio above 1 + target
   is noise, reported as such (`within_5_percent_both_ways`, `within_3_percent_both_ways`).

The machine is shared: a run that other work slows moves req/s by far more than 5%. So each run also
records the 1-minute load average and the server's own CPU time per request (user + system of the server
process over the run, from /proc, divided by the requests answered): what the protections add to each
request, which other processes change much less than req/s. Per cell, besides the ratio of the medians,
the median of the per-repetition ratios (the two runs of a repetition are back to back, so slow drifts of
the load cancel out) and the ratio of the median CPU times per request. bench/limits/instructions.py counts
instructions per request instead, which other work does not move at all.
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
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench" / "server"))
import run as server_bench  # noqa: E402  (bench/server/run.py: Server, wrk, payload, dataset; one home)
sys.path.insert(0, str(ROOT))
from bench.measured import commit_measured  # noqa: E402


@dataclass(frozen=True)
class Reference:
    """A commit today's server is compared with, the most today may cost against it and where results go."""

    commit: str
    target: float  # today's req/s at least (1 - target) of the reference's; instructions at most (1 + target)
    suffix: str  # of the results files: bench/results/limits<suffix>.json, limits-instructions<suffix>.json
    before: str  # what today has that the reference has not, for the results' `benchmark`
    same_flags: bool  # the reference takes today's flags (--runtime sklearn, --sketch-port, the digest pins)

    @property
    def label(self) -> str:
        return f"before ({self.commit})"

    def results(self, kind: str = "limits") -> Path:
        return ROOT / "bench" / "results" / f"{kind}{self.suffix}.json"


REFERENCES = {
    "issue11": Reference("ef0c679", 0.05, "", "before the server's protections", same_flags=False),
    # 62a1ecf, the first merge of issue 22, has 46a16d7 as its first parent (git log --first-parent).
    "issue22": Reference("46a16d7", 0.03, "-issue22", "before issue 22's bounds", same_flags=True),
}
DEFAULT_REFERENCE = "issue11"
MODELS = {key: server_bench.MODELS[key] for key in ("rf", "logreg")}


def reference_tree(reference: Reference) -> Path:
    tree = ROOT / "bench" / f".ref-{reference.commit}"
    if not (tree / "model-server").is_dir():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), reference.commit],
                       check=True, capture_output=True)
    return tree


def changes_since(reference: Reference, path: str) -> list[str]:
    """The commits that changed `path` since the reference (`git log --oneline`), newest first."""
    log = subprocess.run(["git", "-C", str(ROOT), "log", "--oneline", f"{reference.commit}..HEAD", "--", path],
                         capture_output=True, text=True, check=True).stdout
    return log.splitlines()


def train(key: str, data: Path, output: Path, pythonpath: str | None) -> str:
    """Train with the trainer of the tree on `pythonpath` (this checkout's when None); the version's URI."""
    code = ("import json, sys\nfrom modelloop.training.trainer import train\n"
            "spec = json.loads(sys.argv[1])\ntrain(spec, version=1, identity={'name': 'bench'})\n")
    spec = {"dataset": {"uri": f"file://{data}", "target": "label"}, "estimator": MODELS[key]["estimator"],
            "output": {"uri": f"file://{output}"}}
    env = {**os.environ, **({"PYTHONPATH": pythonpath} if pythonpath else {})}
    subprocess.run([sys.executable, "-c", code, json.dumps(spec)], env=env, check=True, capture_output=True)
    return f"file://{output}/v1"


def served_flags(version: Path) -> list[str]:
    """Today's flags besides the model and ports: scikit-learn, and the digests pinned as the operator pins
    them (of the version's own metadata.json and model)."""
    from modelloop.artifacts import sha256_bytes

    metadata = (version / "metadata.json").read_bytes()
    return ["--runtime", "sklearn", "--model-sha256", json.loads(metadata)["model"]["sha256"],
            "--metadata-sha256", sha256_bytes(metadata)]


def server_command(uri: str, port: int, flags: list[str]) -> list[str]:
    return [sys.executable, "-m", "modelloop_server.cli", "--model-uri", uri, "--model-name", server_bench.MODEL_NAME,
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", *flags]


def server_commands(reference: Reference, now_uri: str, ref_uri: str, now_port: int,
                    ref_port: int) -> tuple[list[str], list[str]]:
    """Today's command and the reference's (to run with the reference tree on PYTHONPATH): today's with its
    defaults, its own sketch port and `served_flags`; the reference's with the same when it takes them."""
    now = server_command(now_uri, now_port, ["--sketch-port", str(server_bench.free_port()),
                                             *served_flags(Path(now_uri.removeprefix("file://")))])
    ref_flags = (["--sketch-port", str(server_bench.free_port()),
                  *served_flags(Path(ref_uri.removeprefix("file://")))] if reference.same_flags else [])
    return now, server_command(ref_uri, ref_port, ref_flags)


def method_reference(reference: Reference) -> dict:
    """For a reference that takes today's flags, what the results say of it: besides what is measured, today
    differs from it by the server changes since (issue11's results predate this and say nothing here)."""
    if not reference.same_flags:
        return {}
    return {"reference": {"commit": reference.commit, "flags": "the same as today's (--runtime sklearn, "
                          "--sketch-port, --model-sha256/--metadata-sha256 of its own version)",
                          "server_changes_since": changes_since(reference, "model-server/"),
                          # the loader the server imports (load time: the bounds on what a store holds)
                          "artifacts_changes_since": changes_since(reference, "operator/modelloop/artifacts/")}}


def both_ways(target: float) -> str:
    """The key of a cell's `|ratio - 1| <= target` (`within_5_percent_both_ways` for issue11)."""
    return f"within_{round(target * 100)}_percent_both_ways"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", choices=REFERENCES, default=DEFAULT_REFERENCE,
                        help=", ".join(f"{name}: {r.commit} (target {r.target:.0%}%)"
                                       for name, r in REFERENCES.items()))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--connections", default="1,8,64")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--server-cpus", default="1")
    parser.add_argument("--load-cpus", default="0")
    parser.add_argument("--output", type=Path, help="default: the reference's results file")
    args = parser.parse_args()
    reference = REFERENCES[args.reference]
    target = reference.target
    output = args.output or reference.results()
    server_bench.ensure_tools()
    machine = server_bench.machine_info()  # (its load average is the one at the start)

    tree = reference_tree(reference)
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
            now_port, ref_port = server_bench.free_port(), server_bench.free_port()
            now_command, ref_command = server_commands(reference, now_uri, ref_uri, now_port, ref_port)
            now = server_bench.Server("today", server_bench.MODELLOOP, {"commit": "HEAD"}, now_port, now_command,
                                      ROOT, work / key / "today.log")
            ref = server_bench.Server(reference.label, server_bench.MODELLOOP, {"commit": reference.commit}, ref_port,
                                      ["env", f"PYTHONPATH={ref_path}", *ref_command], ROOT,
                                      work / key / "reference.log")
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
                cell["within_target"] = cell["rps_ratio"] >= 1 - target  # the change costs at most the target
                cell[both_ways(target)] = abs(cell["rps_ratio"] - 1) <= target
                results[key][conns] = cell
    print(f"{'model':<7} {'conns':>5} {'today req/s':>12} {'before req/s':>13} {'ratio':>6} {'paired':>7} "
          f"{'today p99':>10} {'before p99':>11} {'ratio':>6} {'CPU us/req':>15} {'ratio':>6} {'load':>9}")
    for key, cells in results.items():
        for conns, c in cells.items():
            t, b = c["today"], c[reference.label]
            print(f"{key:<7} {conns:>5} {t['rps']:>12.0f} {b['rps']:>13.0f} {c['rps_ratio']:>6.3f} "
                  f"{c['rps_ratio_paired']:>7.3f} {t['p99_ms']:>8.2f}ms {b['p99_ms']:>9.2f}ms {c['p99_ratio']:>6.3f} "
                  f"{t['cpu_us_per_request']:>7.1f}/{b['cpu_us_per_request']:<7.1f} {c['cpu_per_request_ratio']:>6.3f} "
                  f"{c['load_1m'][0]:>4.1f}-{c['load_1m'][1]:<4.1f}")
    met = all(c["within_target"] for cells in results.values() for c in cells.values())
    both = all(c[both_ways(target)] for cells in results.values() for c in cells.values())
    print(f"req/s at least {1 - target:.2f} of the reference's in every cell: {'yes' if met else 'no'}; "
          f"within {target:.0%} both ways: {'yes' if both else 'no'}")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({
        "benchmark": f"modelloop-serve today vs {reference.commit} ({reference.before}), scikit-learn runtime",
        "commit": commit_measured(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine | {"load_average_at_end": list(os.getloadavg())},
        "method": {"load_tool": "wrk, 1 thread, keep-alive", "rows_per_request": 1, "duration_s": args.duration,
                   "repeat": args.repeat, "server_cpus": args.server_cpus, "load_cpus": args.load_cpus,
                   "models": {key: MODELS[key] for key in args.models.split(",")},
                   **method_reference(reference),
                   "target": f"req/s at least {1 - target:.2f} of the reference's (rps_ratio: the ratio of "
                             "the medians)",
                   "also": "rps_ratio_paired: median of the per-repetition ratios; cpu_per_request_ratio: "
                           "ratio of the median server CPU time per request (user + system, /proc)"},
        "results": {k: {str(c): v for c, v in cells.items()} for k, cells in results.items()},
        "within_target": met}, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
