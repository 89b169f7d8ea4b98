"""What prediction records cost, in instructions per request: a count that other work on the machine does not move.

    .venv/bin/python bench/feedback/instructions.py [--repeat 3] [--rounds 200] [--connections 1,8,64]

bench/feedback/run.py measures req/s and p99 with records on and off, and on a shared 2-core machine other
processes move req/s by more than the 3% in question. This counts what records add, in two parts, under valgrind's
callgrind (LogisticRegression by default, bench/server's dataset, modelloop's trainer, this checkout's server):

1. The serving path. The two servers of run.py's serving part (defaults; records on adds --feedback-uri
   file://<temp dir> and --pod-name), each under callgrind with counting off while it loads. Once ready,
   --connections keep-alive connections send 1-row V2 requests without an id (the server makes one) in lock-step
   (bench/limits/instructions.py's LockStep: each connection sends, then each reads its answer, so a round forms
   batches as wrk's keep-alive connections do at that concurrency): 50 rounds to warm up, then --rounds rounds
   counted (all threads of the process), over the requests answered. The records-on server runs with
   --records-flush-seconds 3600 so that no flush falls in the rounds: under valgrind a server answers ~50x fewer
   requests a second, and the quarter-second timer would write segments of a few rows, each counting a
   segment's fixed cost against a handful of requests. Runs alternate, --repeat times per connection count.
2. The flush, counted alone: a child process under callgrind builds a recorder as the server does (with its id
   index), records one-row batches of the served model's own outputs with ids made as the server makes them,
   and switches counting on and off around each flush (two warm-up flushes, then --flushes counted), at the rows a
   native server flushes every quarter second at that concurrency (--flush-rows).

Records on costs (1) with records on + (2) per row (one row a request); the ratio is over (1) with records off.
Kernel time (the segment's write and fsync) is not counted: callgrind counts user space. Medians reported.
Target (issue 20): records cost at most 3% (ratio <= 1.03). Writes bench/results/feedback-instructions.json with
the commit measured. Needs valgrind (installed when missing and root). A server run takes 1 to 4 minutes (valgrind's
start-up dominates), a flush count about 2: about 45 minutes for the default run on 2 shared cores.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench" / "server"))
import run as server_bench  # noqa: E402  (bench/server/run.py: dataset, models, payload; one home)
sys.path.insert(0, str(ROOT))
from bench.measured import commit_measured  # noqa: E402

# bench/limits/instructions.py: LockStep, the request bytes and valgrind's set-up (one home).
_spec = importlib.util.spec_from_file_location("limits_instructions", ROOT / "bench" / "limits" / "instructions.py")
assert _spec is not None and _spec.loader is not None
counting = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(counting)

RESULTS = ROOT / "bench" / "results" / "feedback-instructions.json"
TARGET = 0.03
FLUSH_SECONDS = "3600"
WARMUP_ROUNDS = 50


def count(command: list[str], port: int, connections: int, rounds: int, cpus: str, log: Path) -> float:
    """Instructions per request of one server run's counted rounds under callgrind."""
    with counting.under_callgrind(command, port, None, cpus, log) as process:
        clients = counting.LockStep(port, connections, counting.request_bytes())
        clients.rounds(WARMUP_ROUNDS)
        pid = str(process.pid)  # always one pid: without it callgrind_control acts on every callgrind run
        subprocess.run(["callgrind_control", "-i", "on", pid], check=True, capture_output=True)
        clients.rounds(rounds)
        subprocess.run(["callgrind_control", "--dump=rounds", pid], check=True, capture_output=True)
        clients.close()
    return _totals(Path(f"{log.with_suffix('.callgrind')}.1")) / (rounds * connections)


# Runs under callgrind (counting off): a recorder as the server makes one (open_outcomes: its flusher's index), fed
# as the prediction thread feeds it (1-row batches of the served model's own outputs, ids as the server makes them),
# then each flush counted alone: the process switches counting on and off around it with callgrind_control.
FLUSH_CHILD = r"""
import itertools, os, secrets, subprocess, sys, tempfile
from modelloop.artifacts.backends import backend_for
from modelloop.artifacts.uri import parse_uri
from modelloop_server.cli import load_served_model
from modelloop_server.recording import PredictionIndex, PredictionRecorder

uri, rows, flushes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
model = load_served_model(uri, "bench")
model.warm_up()
predictions, probabilities = model.predict(model.example_rows(), proba=model.classifier)
predictions, probabilities = predictions[:1], None if probabilities is None else probabilities[:1]
base = parse_uri("file://" + tempfile.mkdtemp(prefix="flush-"), field="store")
backend = backend_for(base)
recorder = PredictionRecorder(backend, base, writer="bench-0", version=model.version, classifier=model.classifier)
recorder.on_flushed = PredictionIndex(backend, base, max_delay_seconds=7 * 86400.0).add
prefix, counter = secrets.token_hex(10), itertools.count()
control = ["callgrind_control", "-i"]
for flush in range(flushes + 2):  # the first two warm up (imports, the Parquet writer, the index): not counted
    for _ in range(rows):
        recorder.record((f"{prefix}{next(counter):012x}",), (1,), predictions, probabilities)
    counted = flush >= 2
    if counted:
        subprocess.run([*control, "on", str(os.getpid())], check=True, capture_output=True)
    assert recorder.flush() == rows
    if counted:
        subprocess.run([*control, "off", str(os.getpid())], check=True, capture_output=True)
        subprocess.run(["callgrind_control", "--dump=flush", str(os.getpid())], check=True, capture_output=True)
"""


def flush_count(uri: str, rows: int, flushes: int, cpus: str, log: Path) -> list[float]:
    """Instructions per row of `flushes` flushes of `rows` 1-row batches each (FLUSH_CHILD), one dump each."""
    out = log.with_suffix(".callgrind")
    subprocess.run(["taskset", "-c", cpus, "valgrind", "--tool=callgrind", "--instr-atstart=no",
                    f"--callgrind-out-file={out}", sys.executable, "-c", FLUSH_CHILD, uri, str(rows), str(flushes)],
                   cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log.open("w"), check=True, timeout=1800)
    return [_totals(Path(f"{out}.{i}")) / rows for i in range(1, flushes + 1)]


def _totals(path: Path) -> int:
    found = re.search(r"^totals: (\d+)", path.read_text(), re.MULTILINE)
    assert found, f"no totals in {path}"
    return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--connections", default="1,8,64")
    parser.add_argument("--flush-rows", default="400,1250,1250",
                        help="rows per flush at each connection count: a native server's req/s there x 0.25 s "
                             "(bench/results/feedback.json: about 1,600, 5,000 and 5,000 req/s)")
    parser.add_argument("--flushes", type=int, default=3)
    parser.add_argument("--model", default="logreg", choices=sorted(server_bench.MODELS))
    parser.add_argument("--server-cpus", default="1")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    counting.ensure_valgrind()
    connections = [int(c) for c in args.connections.split(",")]
    flush_rows = dict(zip(connections, (int(r) for r in args.flush_rows.split(","))))
    if set(flush_rows) != set(connections):
        parser.error("--flush-rows needs one count per connection count")
    commit = commit_measured()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    load_at_start = list(os.getloadavg())
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="modelloop-feedback-instructions-") as tmp:
        work = Path(tmp)
        data = work / "data.csv"
        server_bench.dataset(data)
        uri, _, _ = server_bench.build_model(work, args.model, data)
        flushes = {rows: flush_count(uri, rows, args.flushes, args.server_cpus, work / f"flush-{rows}.log")
                   for rows in sorted(set(flush_rows.values()))}
        for rows, counts in flushes.items():
            print(f"  a flush of {rows:,} one-row batches: {statistics.median(counts):,.0f} instructions a row "
                  f"({', '.join(f'{c:,.0f}' for c in counts)})", flush=True)
        for conns in connections:
            runs: dict[str, list[float]] = {"on": [], "off": []}
            for repetition in range(args.repeat):
                for label in (("on", "off") if repetition % 2 == 0 else ("off", "on")):
                    port = server_bench.free_port()
                    command = [sys.executable, "-m", "modelloop_server.cli", "--model-uri", uri,
                               "--model-name", server_bench.MODEL_NAME, "--host", "127.0.0.1", "--port", str(port),
                               "--sketch-port", str(server_bench.free_port()), "--log-level", "warning"]
                    if label == "on":
                        command += ["--feedback-uri", f"file://{work / f'store-{conns}-{repetition}'}",
                                    "--pod-name", "bench-feedback-0", "--records-flush-seconds", FLUSH_SECONDS]
                    log = work / f"{label}-{conns}-{repetition}.log"
                    runs[label].append(count(command, port, conns, args.rounds, args.server_cpus, log))
                    print(f"  {conns} connections  rep {repetition + 1}  records {label:<3} "
                          f"{runs[label][-1]:>10,.0f} instructions/request", flush=True)
            on_rounds, off = statistics.median(runs["on"]), statistics.median(runs["off"])
            flush = statistics.median(flushes[flush_rows[conns]])  # one row a request
            on = on_rounds + flush
            results[str(conns)] = {
                "on": on, "off": off, "ratio": on / off, "extra_per_request": on - off,
                "serving_path_on": on_rounds, "serving_path_ratio": on_rounds / off,
                "flush_per_request": flush, "flush_rows": flush_rows[conns],
                "within_target": on / off <= 1 + TARGET, "runs": runs}
    print(f"{'conns':>5} {'records on':>12} {'records off':>12} {'ratio':>6} {'extra':>8} {'of it flush':>12}   "
          "(instructions per request, medians)")
    for conns, r in results.items():
        print(f"{conns:>5} {r['on']:>12,.0f} {r['off']:>12,.0f} {r['ratio']:>6.3f} {r['extra_per_request']:>8,.0f} "
              f"{r['flush_per_request']:>12,.0f}")
    met = all(r["within_target"] for r in results.values())
    print(f"records cost at most {TARGET:.0%} at every concurrency: {'yes' if met else 'no'}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({
        "benchmark": "prediction records on vs off (same server, same model): instructions per request under "
                     "callgrind; records on = its serving path (counted rounds, no flush among them) + a flush's "
                     "instructions per row (counted alone, at the rows a native server flushes at that load)",
        "commit": commit, "date": started, "load_average_at_start": load_at_start,
        "load_average_at_end": list(os.getloadavg()),
        "method": {"connections": connections, "rounds": args.rounds, "warmup_rounds": WARMUP_ROUNDS,
                   "repeat": args.repeat, "rows_per_request": 1, "request_id": "none sent: the server generates one",
                   "server_cpus": args.server_cpus, "records_flush_seconds_in_rounds": float(FLUSH_SECONDS),
                   "flush_rows": flush_rows, "flushes_counted": args.flushes,
                   "flush_counts_per_row": flushes,
                   "model": {args.model: server_bench.MODELS[args.model]["estimator"]},
                   "valgrind": subprocess.run(["valgrind", "--version"], capture_output=True, text=True).stdout.strip(),
                   "not_counted": "kernel time (the segment's write and fsync): callgrind counts user space only",
                   "target": f"records on at most {TARGET:.0%} above records off"},
        "results": results, "within_target": met}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
