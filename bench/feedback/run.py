"""What outcomes cost: prediction records on the serving path, feedback ingestion, and the join.

    .venv/bin/python bench/feedback/run.py [--repeat 5] [--duration 5] [--connections 1,8,64] [--model logreg]
    .venv/bin/python bench/feedback/run.py --quick --output /tmp/feedback-quick.json   # a smoke run (~1 min)

Three measurements, one model: LogisticRegression (bench/server's MODELS["logreg"]; --model rf for its
RandomForest), trained with modelloop's trainer on bench/server's dataset and served by modelloop-serve with
its defaults, pinned with taskset to one CPU (--server-cpus), the load on the other (--load-cpus).

1. Serving: records on against records off. Two modelloop-serve processes of this checkout, same model version,
   same flags, except that one has --feedback-uri file://<temp dir> (what MODELLOOP_FEEDBACK_URI sets in a pod)
   and --pod-name. All that records add counts: the probabilities a classifier is asked for (a record keeps the
   confidence), each batch appended to the recorder on the predict thread, and the thread that writes a Parquet
   segment every second, in the same process on the same CPU. 1-row V2 requests without an `id` (the server
   makes one: the usual case), wrk with bench/server's Lua script; per repetition and connection count (1, 8,
   64) the two servers run back to back, the first alternating. Per cell: the median over repetitions of the
   paired ratios on/off of req/s and of p99 (the two runs of a pair are seconds apart, so slow drifts of the
   machine's load cancel), and the server's CPU time per request (user + system from /proc, over the run: what
   other processes move much less than req/s). Target: records cost at most 3% of req/s (paired req/s ratio >=
   0.97). After the run the records-on server is stopped (it flushes) and the rows in its prediction segments
   are counted against the requests it answered: recorded >= answered (wrk does not count requests in flight
   when it stops, the server records them), dropped must be 0.
2. Feedback ingestion: a fresh records-on server predicts --ingest-rows rows (V2 requests of 1,000 rows, ids
   taken from the responses), then, after 2.5 s (the flush), receives their labels in calls of 10,000 (the
   limit) from 4 client threads (httpx, pinned to --load-cpus, bodies encoded beforehand). Every call must
   be 200 with all its labels accepted. --repeat passes label the same ids again (a retry: the join counts
   each id once); the first pass also loads the server's id index from the store. Reported: labels per
   second (all labels of a pass over its wall time), call latency p50/p99, the server's CPU per label.
   Target: >= 50,000 labels/s.
3. The join: --join-predictions prediction records in 100 segments and --join-labels label records in 10
   (records.encode, the store layout of records.segment_key, two writers; ids a 32-hex request id and the
   row, requests of 1 to 16 rows; two versions; labels of a random tenth of the predictions, arriving after
   them). A subprocess pinned to --server-cpus (a server's feedback thread does this) lists the segment
   files and runs modelloop.outcomes.join.window_performance over all of them, reading each with
   records.decode; it reports the wall time of the call and its peak RSS (VmHWM; its RSS after imports is
   reported too). Targets: under 30 s and within 1 GiB of peak RSS; every label must be joined.

Reading the output: ratios above 1 for req/s (below 1 for p99 and CPU) mean records on did better, which is
noise; on this shared 2-core machine req/s varies by more than 3% from run to run, so look at the CPU per
request as well, and at the load average recorded with every run. --quick shrinks everything (repeat 1,
2 s runs, 20,000 labels, a join of 1M/100k rows): a smoke run, not a measurement.

Writes --output (default bench/results/feedback.json): the commit measured (and the files of model-server/
and operator/ changed since it), date, machine, method, every raw run and the summary. Duration of the
default run: about 7 minutes on 2 cores (2 x 3 x 5 wrk runs of 5 s and the warm-ups; 5 ingestion passes;
writing the join's records, about 15 s, and 5 joins).
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench" / "server"))
import run as server_bench  # noqa: E402  (bench/server/run.py: Server, wrk, payload, dataset; one home)
sys.path.insert(0, str(ROOT))
from bench.measured import commit_measured  # noqa: E402
from hack.cluster import cpu_seconds  # noqa: E402
from modelloop.outcomes import records  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "feedback.json"
SERVING_TARGET = 0.97         # req/s with records on, at least this much of records off
LABELS_PER_SECOND_TARGET = 50_000
JOIN_SECONDS_TARGET = 30.0
JOIN_RSS_TARGET_MIB = 1024.0
INGEST_ROWS_PER_REQUEST = 1_000
FEEDBACK_CALL_IDS = 10_000     # the server's --max-feedback-ids default
FEEDBACK_CLIENTS = 4
FLUSH_WAIT_SECONDS = 2.5       # a flush (1 s) and the index refresh (at most once a second)
PREDICTION_SEGMENTS = 100
LABEL_SEGMENTS = 10
QUICK = {"repeat": 1, "duration": 2, "warmup": 1, "ingest_rows": 20_000,
         "join_predictions": 1_000_000, "join_labels": 100_000}
FULL = {"repeat": 5, "duration": 5, "warmup": 2, "ingest_rows": 200_000,
        "join_predictions": 10_000_000, "join_labels": 1_000_000}

# Runs in the join subprocess: only what the join needs is imported, so its RSS is the join's.
JOIN_CHILD = r"""
import json, sys, time
from pathlib import Path

def status_kib(field):
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field + ":"))
    return int(line.split()[1])

from modelloop.outcomes import records
from modelloop.outcomes.join import window_performance

root, since_ms, max_delay_ms, max_rows = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rss_after_imports = status_kib("VmRSS")

def read(key):
    return records.decode((root / key).read_bytes(), key.split("/", 1)[0], max_rows=max_rows)

started = time.perf_counter()
keys = [p.relative_to(root).as_posix() for p in root.rglob("*.parquet")]
result = window_performance(keys, read, since_ms=since_ms, max_delay_ms=max_delay_ms, classifier=True,
                            classes=["0", "1"])
seconds = time.perf_counter() - started
print("RESULT " + json.dumps({"seconds": seconds, "segments": len(keys), "peak_rss_kib": status_kib("VmHWM"),
                              "rss_after_imports_kib": rss_after_imports, "versions": result}))
"""


# -- set-up ------------------------------------------------------------------------------------------------



def records_server(label: str, uri: str, work: Path, store: Path) -> server_bench.Server:
    return server_bench.modelloop_server(label, uri, work, ["--feedback-uri", f"file://{store}",
                                                            "--pod-name", "bench-feedback-0"],
                                         {"records": True, "feedback_uri": f"file://{store}"})


def rows_in(store: Path, kind: str) -> tuple[int, int]:
    """(rows, segments) of one kind under a feedback store, from the Parquet footers."""
    files = list((store / kind).rglob("*.parquet"))
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files), len(files)


def records_dropped(server: server_bench.Server) -> float:
    text = httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("modelloop_server_records_total{") and 'result="dropped"' in line)


# -- 1. serving: records on vs off -------------------------------------------------------------------------

def bench_serving(uri: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    store = work / "serving-store"
    on = records_server("records on", uri, work, store)
    off = server_bench.modelloop_server("records off", uri, work, [], {"records": False})
    script = work / "wrk.lua"
    script.write_text(server_bench.WRK_SCRIPT)
    body = work / "body-1.json"
    body.write_text(json.dumps(server_bench.payload(1)))
    dropped: list[float] = []
    paired = server_bench.paired_serving(
        [on, off], body, script, args.connections, repeat=args.repeat, duration=args.duration, warmup=args.warmup,
        server_cpus=args.server_cpus, load_cpus=args.load_cpus,
        before_stop=lambda servers: dropped.append(records_dropped(on)))  # records on: flushed at its shutdown
    answered = paired.warmup_requests[on.label] + sum(r["requests"] for rs in paired.runs[on.label].values()
                                                      for r in rs)
    recorded, segments = rows_in(store, records.PREDICTIONS)
    cells = {conns: serving_cell(paired.runs[on.label][conns], paired.runs[off.label][conns])
             for conns in args.connections}
    return {"cells": cells,
            "records": {"rows_recorded": recorded, "segments": segments, "requests_answered": answered,
                        "rows_per_request": 1, "dropped": dropped[0],
                        "all_recorded": recorded >= answered and dropped[0] == 0},
            "errors": sum(r["errors"] for per in paired.runs.values() for rs in per.values() for r in rs)}


def serving_cell(on: list[dict], off: list[dict]) -> dict[str, Any]:
    cell = server_bench.paired_cell(on, off)
    cell = {"on": cell.pop("a"), "off": cell.pop("b"), **cell, "runs": {"on": on, "off": off}}
    cell["within_target"] = cell["rps_ratio_paired"] >= SERVING_TARGET
    return cell


# -- 2. feedback ingestion ---------------------------------------------------------------------------------

def predict_for_ids(server: server_bench.Server, rows: int) -> tuple[list[str], list[Any], float]:
    """Send `rows` rows in V2 requests of INGEST_ROWS_PER_REQUEST; their prediction ids and predictions,
    and the seconds it took."""
    body = orjson.dumps(server_bench.payload(INGEST_ROWS_PER_REQUEST))
    ids: list[str] = []
    predicted: list[Any] = []
    started = time.perf_counter()
    with httpx.Client(timeout=60) as client:
        for _ in range(rows // INGEST_ROWS_PER_REQUEST):
            response = client.post(server.infer_url, content=body, headers={"content-type": "application/json"})
            response.raise_for_status()
            answer = response.json()
            data = answer["outputs"][0]["data"]
            ids.extend(f"{answer['id']}:{row}" for row in range(len(data)))
            predicted.extend(data)
    return ids, predicted, time.perf_counter() - started


def feedback_bodies(ids: list[str], predicted: list[Any]) -> list[bytes]:
    """Calls of FEEDBACK_CALL_IDS labels: the predicted class, a tenth of them replaced by another class."""
    classes = sorted(set(predicted), key=str)
    rng = np.random.default_rng(0)
    wrong = rng.random(len(ids)) < 0.1
    targets = [classes[(classes.index(p) + 1) % len(classes)] if w else p for p, w in zip(predicted, wrong)]
    return [orjson.dumps({"ids": ids[i:i + FEEDBACK_CALL_IDS], "targets": targets[i:i + FEEDBACK_CALL_IDS]})
            for i in range(0, len(ids), FEEDBACK_CALL_IDS)]


def send_feedback(url: str, bodies: list[bytes], cpus: set[int]) -> tuple[float, list[dict[str, Any]]]:
    """POST every body from FEEDBACK_CLIENTS threads (each its own connection, pinned to `cpus`); the wall
    time and one entry per call (status, accepted, seconds)."""
    work: queue.Queue[bytes] = queue.Queue()
    for body in bodies:
        work.put(body)
    calls: list[dict[str, Any]] = []
    lock = threading.Lock()

    def client() -> None:
        os.sched_setaffinity(0, cpus)  # this thread only
        with httpx.Client(timeout=120, headers={"content-type": "application/json"}) as http:
            while True:
                try:
                    body = work.get_nowait()
                except queue.Empty:
                    return
                started = time.perf_counter()
                response = http.post(url, content=body)
                seconds = time.perf_counter() - started
                accepted = response.json().get("accepted", 0) if response.status_code == 200 else 0
                with lock:
                    calls.append({"status": response.status_code, "accepted": accepted, "seconds": seconds,
                                  **({} if response.status_code == 200 else {"error": response.text[:300]})})

    threads = [threading.Thread(target=client) for _ in range(FEEDBACK_CLIENTS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, calls


def bench_ingestion(uri: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    store = work / "ingestion-store"
    server = records_server("ingestion", uri, work, store)
    load_cpus = {int(c) for c in args.load_cpus.split(",")}
    passes = []
    try:
        server.start(args.server_cpus)
        server.wait_ready()
        ids, predicted, predict_seconds = predict_for_ids(server, args.ingest_rows)
        bodies = feedback_bodies(ids, predicted)
        time.sleep(FLUSH_WAIT_SECONDS)
        url = f"{server.model_url}/feedback"
        assert server.process is not None
        for number in range(1, args.repeat + 1):
            cpu_before = cpu_seconds(server.process.pid)
            seconds, calls = send_feedback(url, bodies, load_cpus)
            cpu = cpu_seconds(server.process.pid) - cpu_before
            accepted = sum(c["accepted"] for c in calls)
            latencies = [c["seconds"] * 1000 for c in calls]
            passes.append({
                "pass": number, "labels": len(ids), "calls": len(calls), "accepted": accepted,
                "failed_calls": [c for c in calls if c["status"] != 200], "seconds": seconds,
                "labels_per_second": accepted / seconds, "call_p50_ms": float(np.percentile(latencies, 50)),
                "call_p99_ms": float(np.percentile(latencies, 99)),
                "server_cpu_us_per_label": cpu / max(accepted, 1) * 1e6, "load_1m": os.getloadavg()[0]})
            p = passes[-1]
            print(f"  pass {number}: {accepted:,} of {len(ids):,} labels accepted in {seconds:.2f} s  "
                  f"{p['labels_per_second']:,.0f} labels/s  call p50 {p['call_p50_ms']:.0f} ms "
                  f"p99 {p['call_p99_ms']:.0f} ms  {p['server_cpu_us_per_label']:.1f} us CPU/label", flush=True)
    finally:
        server.stop()
    label_rows, label_segments = rows_in(store, records.LABELS)
    all_ok = all(not p["failed_calls"] and p["accepted"] == p["labels"] for p in passes)
    rate = statistics.median(p["labels_per_second"] for p in passes)
    return {"predictions": len(ids), "predict_seconds": predict_seconds, "passes": passes,
            "labels_per_second_median": rate, "first_pass_labels_per_second": passes[0]["labels_per_second"],
            "call_p50_ms_median": statistics.median(p["call_p50_ms"] for p in passes),
            "call_p99_ms_median": statistics.median(p["call_p99_ms"] for p in passes),
            "label_rows_stored": label_rows, "label_segments": label_segments,
            "all_accepted": all_ok and label_rows == len(ids) * len(passes),
            "within_target": all_ok and rate >= LABELS_PER_SECOND_TARGET}


# -- 3. the join -------------------------------------------------------------------------------------------

def request_ids(rng: np.random.Generator, rows: int) -> pa.Array:
    """`rows` prediction ids `<32 hex>:<row>` of requests of 1 to 16 rows (mostly 1)."""
    sizes = rng.choice([1, 1, 1, 1, 1, 2, 4, 8, 16], size=rows)
    sizes = sizes[:np.searchsorted(np.cumsum(sizes), rows) + 1]
    sizes[-1] -= sizes.sum() - rows
    hexes = rng.bytes(16 * len(sizes)).hex()
    requests = np.array([hexes[i:i + 32] for i in range(0, len(hexes), 32)], dtype=object)
    starts = np.repeat(np.cumsum(sizes) - sizes, sizes)
    row = (np.arange(rows) - starts).astype(str)
    return pc.binary_join_element_wise(pa.array(np.repeat(requests, sizes), pa.string()), pa.array(row), ":")


def write_join_records(root: Path, predictions: int, labels: int, start_ms: int) -> dict[str, Any]:
    """Prediction segments over the 24 h from start_ms (two writers, version 1 then 2), then label segments
    of a random `labels` of them, received one to ten minutes after the last prediction. What the join must
    find, per version."""
    rng = np.random.default_rng(7)
    per_segment = predictions // PREDICTION_SEGMENTS
    step = 86_400_000 // PREDICTION_SEGMENTS
    writers = [records.writer_name(f"churn-predictor-{i}") for i in range(2)]
    chosen_ids, chosen_truth, expected = [], [], {1: 0, 2: 0}
    for seq in range(PREDICTION_SEGMENTS):
        millis = start_ms + seq * step
        version = 1 if seq < PREDICTION_SEGMENTS // 2 else 2
        ids = request_ids(rng, per_segment)
        predicted = rng.integers(0, 2, per_segment)
        table = pa.table({
            "id": ids, "version": pa.array(np.full(per_segment, version, np.int32)),
            "time": pa.array(millis + np.sort(rng.integers(0, 1000, per_segment))),
            "label": pa.array(predicted.astype(str)), "value": pa.nulls(per_segment, pa.float64()),
            "proba": pa.array(rng.uniform(0.5, 1.0, per_segment))}, schema=records.PREDICTION_SCHEMA)
        write_segment(root, records.segment_key(records.PREDICTIONS, millis, writers[seq % 2], seq // 2), table)
        picked = rng.choice(per_segment, labels // PREDICTION_SEGMENTS, replace=False)
        chosen_ids.append(ids.take(pa.array(picked)))
        chosen_truth.append(np.where(rng.random(len(picked)) < 0.15, 1 - predicted[picked], predicted[picked]))
        expected[version] += len(picked)
    label_ids = pa.concat_arrays(chosen_ids)
    truth = np.concatenate(chosen_truth)
    order = rng.permutation(len(truth))
    last_ms = start_ms + 86_400_000
    for seq, part in enumerate(np.array_split(order, LABEL_SEGMENTS)):
        millis = last_ms + 60_000 * (seq + 1)
        table = pa.table({
            "id": label_ids.take(pa.array(part)), "time": pa.array(np.full(len(part), millis, np.int64)),
            "label": pa.array(truth[part].astype(str)), "value": pa.nulls(len(part), pa.float64())},
            schema=records.LABEL_SCHEMA)
        write_segment(root, records.segment_key(records.LABELS, millis, writers[seq % 2], seq), table)
    return {"predictions": per_segment * PREDICTION_SEGMENTS, "labels": len(truth),
            "labelled_per_version": expected}


def write_segment(root: Path, key: str, table: pa.Table) -> None:
    path = root / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(records.encode(table))


def bench_join(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    from modelloop_server.recording import MAX_SEGMENT_ROWS

    root = work / "join-store"
    start_ms = int(time.time() * 1000) - 2 * 86_400_000
    started = time.perf_counter()
    expected = write_join_records(root, args.join_predictions, args.join_labels, start_ms)
    size = sum(f.stat().st_size for f in root.rglob("*.parquet"))
    print(f"  wrote {expected['predictions']:,} predictions and {expected['labels']:,} labels "
          f"({size / 2**20:.0f} MiB) in {time.perf_counter() - started:.1f} s", flush=True)
    max_delay_ms = 7 * 86_400_000
    runs = []
    for number in range(1, args.repeat + 1):
        command = ["taskset", "-c", args.server_cpus, sys.executable, "-c", JOIN_CHILD, str(root), str(start_ms - 1),
                   str(max_delay_ms), str(MAX_SEGMENT_ROWS)]
        out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT).stdout
        raw = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT ")).removeprefix("RESULT "))
        labelled = {int(v): p["labelled"] for v, p in raw["versions"].items()}
        runs.append({"run": number, "seconds": raw["seconds"], "segments": raw["segments"],
                     "peak_rss_mib": raw["peak_rss_kib"] / 1024, "rss_after_imports_mib":
                     raw["rss_after_imports_kib"] / 1024, "labelled_per_version": labelled,
                     "accuracy_per_version": {v: p["metrics"]["accuracy"]["value"]
                                              for v, p in raw["versions"].items()},
                     "load_1m": os.getloadavg()[0]})
        r = runs[-1]
        print(f"  join {number}: {r['seconds']:.2f} s  peak RSS {r['peak_rss_mib']:.0f} MiB "
              f"(after imports {r['rss_after_imports_mib']:.0f} MiB)  labelled {labelled}", flush=True)
    seconds = statistics.median(r["seconds"] for r in runs)
    peak = max(r["peak_rss_mib"] for r in runs)
    complete = all(r["labelled_per_version"] == expected["labelled_per_version"] for r in runs)
    return {"records": expected, "bytes": size, "runs": runs, "seconds_median": seconds, "peak_rss_mib_max": peak,
            "every_label_joined": complete,
            "within_target": complete and seconds < JOIN_SECONDS_TARGET and peak <= JOIN_RSS_TARGET_MIB}


# -- report ------------------------------------------------------------------------------------------------

def print_summary(serving: dict, ingestion: dict, join: dict) -> None:
    print("\n1. serving, records on / off (medians of per-repetition paired ratios)")
    print(f"{'conns':>5} {'on req/s':>9} {'off req/s':>10} {'ratio':>6} {'on p99':>8} {'off p99':>8} {'ratio':>6} "
          f"{'CPU us/req on/off':>18} {'ratio':>6} {'load':>9}")
    for conns, c in serving["cells"].items():
        on, off = c["on"], c["off"]
        print(f"{conns:>5} {on['rps']:>9.0f} {off['rps']:>10.0f} {c['rps_ratio_paired']:>6.3f} "
              f"{on['p99_ms']:>6.2f}ms {off['p99_ms']:>6.2f}ms {c['p99_ratio_paired']:>6.3f} "
              f"{on['cpu_us_per_request']:>9.1f}/{off['cpu_us_per_request']:<8.1f} "
              f"{c['cpu_per_request_ratio_paired']:>6.3f} {c['load_1m'][0]:>4.1f}-{c['load_1m'][1]:<4.1f}")
    rec = serving["records"]
    print(f"records: {rec['rows_recorded']:,} rows in {rec['segments']} segments for {rec['requests_answered']:,} "
          f"requests answered; dropped {rec['dropped']:g}; all recorded: {'yes' if rec['all_recorded'] else 'NO'}")
    print(f"target req/s ratio >= {SERVING_TARGET} in every cell: "
          f"{'yes' if all(c['within_target'] for c in serving['cells'].values()) else 'no'}")
    print(f"\n2. ingestion: {ingestion['labels_per_second_median']:,.0f} labels/s (median of "
          f"{len(ingestion['passes'])} pass(es); first pass {ingestion['first_pass_labels_per_second']:,.0f}), "
          f"call p50 {ingestion['call_p50_ms_median']:.0f} ms p99 {ingestion['call_p99_ms_median']:.0f} ms; "
          f"all accepted: {'yes' if ingestion['all_accepted'] else 'NO'}; "
          f"target >= {LABELS_PER_SECOND_TARGET:,}/s: {'yes' if ingestion['within_target'] else 'no'}")
    print(f"\n3. join of {join['records']['predictions']:,} predictions and {join['records']['labels']:,} labels: "
          f"{join['seconds_median']:.2f} s (median), peak RSS {join['peak_rss_mib_max']:.0f} MiB; every label "
          f"joined: {'yes' if join['every_label_joined'] else 'NO'}; target < {JOIN_SECONDS_TARGET:g} s and "
          f"<= {JOIN_RSS_TARGET_MIB:g} MiB: {'yes' if join['within_target'] else 'no'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"a smoke run: {QUICK} unless given")
    parser.add_argument("--repeat", type=int, help=f"repetitions of each part (default {FULL['repeat']})")
    parser.add_argument("--duration", type=int, help=f"seconds per wrk run (default {FULL['duration']})")
    parser.add_argument("--warmup", type=int, help=f"seconds of warm-up per server (default {FULL['warmup']})")
    parser.add_argument("--connections", default="1,8,64")
    parser.add_argument("--model", default="logreg", choices=sorted(server_bench.MODELS))
    parser.add_argument("--ingest-rows", type=int, help=f"predictions then labelled (default {FULL['ingest_rows']})")
    parser.add_argument("--join-predictions", type=int, help=f"default {FULL['join_predictions']}")
    parser.add_argument("--join-labels", type=int, help=f"default {FULL['join_labels']}")
    parser.add_argument("--server-cpus", default="1")
    parser.add_argument("--load-cpus", default="0")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.connections = [int(c) for c in args.connections.split(",")]
    if args.repeat < 1 or args.duration < 1 or args.warmup < 1:
        parser.error("--repeat, --duration and --warmup must be at least 1")
    if args.ingest_rows < FEEDBACK_CALL_IDS or args.join_labels < PREDICTION_SEGMENTS:
        parser.error(f"--ingest-rows must be at least {FEEDBACK_CALL_IDS}, --join-labels at least "
                     f"{PREDICTION_SEGMENTS}")

    server_bench.ensure_tools()
    machine = server_bench.machine_info()  # (its load average is the one at the start)
    commit = commit_measured()
    with tempfile.TemporaryDirectory(prefix="modelloop-feedback-") as tmp:
        work = Path(tmp)
        data = work / "data.csv"
        server_bench.dataset(data)
        uri, _, _ = server_bench.build_model(work, args.model, data)
        print(f"== 1. serving with records on vs off ({args.model}, 1-row V2 requests)", flush=True)
        serving = bench_serving(uri, work, args)
        print(f"== 2. feedback ingestion ({args.ingest_rows:,} predictions, then their labels)", flush=True)
        ingestion = bench_ingestion(uri, work, args)
        print(f"== 3. the join ({args.join_predictions:,} predictions, {args.join_labels:,} labels)", flush=True)
        join = bench_join(work, args)
    print_summary(serving, ingestion, join)
    report = {
        "benchmark": "outcomes: prediction records on vs off (same server, same model), feedback ingestion, the join",
        "commit": commit, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine | {"load_average_at_end": list(os.getloadavg())},
        "method": {
            "quick": args.quick, "model": {args.model: server_bench.MODELS[args.model]["estimator"]},
            "server": "modelloop-serve of this checkout, defaults; records on: --feedback-uri file://<temp dir>",
            "server_cpus": args.server_cpus, "load_cpus": args.load_cpus, "repeat": args.repeat,
            "serving": {"load_tool": "wrk, 1 thread, keep-alive, bench/server's Lua script", "rows_per_request": 1,
                        "request_id": "none sent: the server generates one", "duration_s": args.duration,
                        "warmup_s": args.warmup, "connections": args.connections,
                        "ratios": "median over repetitions of on/off of the two back-to-back runs",
                        "target": f"rps_ratio_paired >= {SERVING_TARGET}"},
            "ingestion": {"predictions": f"V2 requests of {INGEST_ROWS_PER_REQUEST} rows",
                          "feedback": f"calls of {FEEDBACK_CALL_IDS} labels from {FEEDBACK_CLIENTS} httpx threads "
                                      "pinned to the load CPUs, bodies encoded beforehand",
                          "wait_before_labels_s": FLUSH_WAIT_SECONDS,
                          "target": f"labels_per_second_median >= {LABELS_PER_SECOND_TARGET}"},
            "join": {"segments": {"predictions": PREDICTION_SEGMENTS, "labels": LABEL_SEGMENTS},
                     "process": "a subprocess pinned to the server CPUs: list, records.decode, window_performance",
                     "target": f"seconds_median < {JOIN_SECONDS_TARGET}, peak_rss_mib_max <= {JOIN_RSS_TARGET_MIB}"},
        },
        "serving": {**serving, "cells": {str(c): v for c, v in serving["cells"].items()}},
        "ingestion": ingestion, "join": join,
        "within_targets": {"serving": all(c["within_target"] for c in serving["cells"].values())
                           and serving["records"]["all_recorded"] and serving["errors"] == 0,
                           "ingestion": ingestion["within_target"] and ingestion["all_accepted"],
                           "join": join["within_target"]},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(server_bench.rounded(report), indent=2, default=str) + "\n")
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
