"""Drift engine benchmark: modelloop vs Evidently's DataDriftPreset vs a plain scipy loop, same data, same run.

    .venv/bin/python bench/drift/run.py [--rows 100000,1000000] [--tools evidently,scipy,sketch,raw]

Data (seeded, written once as .npy and read by every tool): reference and current windows of N rows,
20 standard-normal numeric columns and 5 categorical ones of 10 categories; in the current window
num_0..num_4 are shifted by +0.3 standard deviations and cat_0 has changed frequencies. Every tool
runs in its own subprocess (Evidently in bench/.venv-evidently, created here when missing, because it
needs pandas < 3), with the same warm-up (one untimed run) and the same number of timed runs (the median is
reported, every run is kept). Wall time covers the tool's work on in-memory DataFrames, not loading data or
importing libraries; for Evidently it is given twice: `Report.run` alone (the tests), and with reading the
results out of its snapshot (`snapshot.dict()`, which builds its report object, as a user reading the flags must).
Peak memory is the growth of the child's peak RSS over its RSS after loading: the peak is reset through
/proc/self/clear_refs after the load and read from VmHWM (getrusage's ru_maxrss when that is not possible).
Every run writes bench/results/drift.json whole (nothing is merged from an earlier file), with the commit.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from bench.measured import run_facts  # noqa: E402
EVIDENTLY_VENV = ROOT / "bench" / ".venv-evidently"
EVIDENTLY_REQUIREMENTS = ["evidently==0.7.23", "pandas<3"]
RESULTS = ROOT / "bench" / "results" / "drift.json"
SEED = 20261127
NUMERIC, CATEGORICAL, CATEGORIES = 20, 5, 10
SHIFTED = [f"num_{i}" for i in range(5)]
CHANGED = ["cat_0"]
SHIFT = 0.3
P_REFERENCE = np.array([0.25, 0.18, 0.13, 0.10, 0.08, 0.07, 0.06, 0.05, 0.04, 0.04])
P_CHANGED = np.array([0.15, 0.15, 0.13, 0.10, 0.08, 0.07, 0.06, 0.08, 0.09, 0.09])  # JS distance 0.16 (base 2)
TOOLS = ("evidently", "scipy", "sketch", "raw")
LABELS = {"evidently": "Evidently 0.7 DataDriftPreset", "scipy": "scipy loop (KS + chi2 + PSI)",
          "sketch": "modelloop sketches", "raw": "modelloop raw (exact)"}
REPEATS = 3  # timed runs of every tool, after one untimed warm-up run; the median is reported


# ---------------------------------------------------------------------------------------------------
# Data

def write_data(rows: int, folder: Path) -> None:
    rng = np.random.default_rng([SEED, rows])
    for window in ("reference", "current"):
        numeric = rng.standard_normal((rows, NUMERIC))
        codes = np.empty((rows, CATEGORICAL), dtype=np.int8)
        for j in range(CATEGORICAL):
            p = P_CHANGED if window == "current" and f"cat_{j}" in CHANGED else P_REFERENCE
            codes[:, j] = rng.choice(CATEGORIES, size=rows, p=p)
        if window == "current":
            numeric[:, :len(SHIFTED)] += SHIFT
        np.save(folder / f"{window}_numeric.npy", numeric)
        np.save(folder / f"{window}_categorical.npy", codes)


def load_frames(folder: Path):
    import pandas as pd
    labels = np.array([f"c{i}" for i in range(CATEGORIES)], dtype=object)
    frames = []
    for window in ("reference", "current"):
        numeric = np.load(folder / f"{window}_numeric.npy")
        codes = np.load(folder / f"{window}_categorical.npy")
        columns = {f"num_{j}": numeric[:, j].copy() for j in range(NUMERIC)}
        columns.update({f"cat_{j}": labels[codes[:, j]] for j in range(CATEGORICAL)})
        del numeric, codes
        frames.append(pd.DataFrame(columns))
    return frames


NUMERIC_COLUMNS = [f"num_{j}" for j in range(NUMERIC)]
CATEGORICAL_COLUMNS = [f"cat_{j}" for j in range(CATEGORICAL)]


# ---------------------------------------------------------------------------------------------------
# The competitors; each returns (flagged columns, dataset drift, extra facts).

def import_evidently():
    import evidently.presets  # noqa: F401
    from evidently import DataDefinition, Dataset, Report  # noqa: F401


def run_evidently(reference, current):
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(numerical_columns=NUMERIC_COLUMNS, categorical_columns=CATEGORICAL_COLUMNS)
    started = time.perf_counter()
    snapshot = Report([DataDriftPreset()]).run(
        current_data=Dataset.from_pandas(current, data_definition=definition),
        reference_data=Dataset.from_pandas(reference, data_definition=definition))
    run_seconds = time.perf_counter() - started
    flagged, methods, share, drift_share = [], {}, None, 0.5
    for metric in snapshot.dict()["metrics"]:
        config = metric["config"]
        if config["type"].endswith("DriftedColumnsCount"):
            share, drift_share = metric["value"]["share"], config.get("drift_share", 0.5)
        elif config["type"].endswith("ValueDrift"):
            method, threshold, value = config["method"], config["threshold"], metric["value"]
            methods[config["column"]] = method
            # p-value methods drift below their threshold, distances at or above it.
            if ("p_value" in method and value < threshold) or ("p_value" not in method and value >= threshold):
                flagged.append(config["column"])
    return flagged, bool(share is not None and share >= drift_share), {
        "methods": sorted(set(methods.values())), "rule": f"share >= {drift_share}", "run_seconds": run_seconds}


def _psi(expected, actual, floor=1e-4):
    p = np.maximum(expected / expected.sum(), floor)
    q = np.maximum(actual / actual.sum(), floor)
    return float(np.sum((q - p) * np.log(q / p)))


def run_scipy(reference, current):
    from scipy.stats import chi2_contingency, ks_2samp

    flagged, psi_flagged = [], []
    for name in NUMERIC_COLUMNS:
        x, y = reference[name].to_numpy(), current[name].to_numpy()
        if ks_2samp(x, y).pvalue < 0.05:
            flagged.append(name)
        edges = np.quantile(x, np.linspace(0, 1, 11))
        edges[0], edges[-1] = -np.inf, np.inf
        if _psi(np.histogram(x, edges)[0], np.histogram(y, edges)[0]) >= 0.1:
            psi_flagged.append(name)
    for name in CATEGORICAL_COLUMNS:
        ref_counts, cur_counts = reference[name].value_counts(), current[name].value_counts()
        table = np.vstack([ref_counts.reindex(ref_counts.index.union(cur_counts.index), fill_value=0).to_numpy(),
                           cur_counts.reindex(ref_counts.index.union(cur_counts.index), fill_value=0).to_numpy()])
        if chi2_contingency(table).pvalue < 0.05:
            flagged.append(name)
        if _psi(table[0].astype(float), table[1].astype(float)) >= 0.1:
            psi_flagged.append(name)
    return flagged, bool(flagged), {"rule": "KS / chi2 p < 0.05 per column, uncorrected; any column",
                                    "psi_flagged": psi_flagged}


def run_sketch(reference, current):
    from modelloop.drift import build_reference, count_into, detect, empty_like

    sketch = build_reference(reference, categorical=CATEGORICAL_COLUMNS)
    report = detect(sketch, count_into(empty_like(sketch), current))
    return report.drifted, report.dataset_drift, {"rule": report.rule, "sketch_bytes": len(json.dumps(sketch))}


def run_raw(reference, current):
    from modelloop.drift import detect_raw

    report = detect_raw(reference, current, categorical=CATEGORICAL_COLUMNS)
    return report.drifted, report.dataset_drift, {"rule": report.rule}


def import_scipy():
    import scipy.stats  # noqa: F401


def import_modelloop():
    import modelloop.drift  # noqa: F401


RUNNERS = {"evidently": run_evidently, "scipy": run_scipy, "sketch": run_sketch, "raw": run_raw}
# Imports happen before the baseline: memory and time measure the work, not loading libraries.
IMPORTS = {"evidently": import_evidently, "scipy": import_scipy, "sketch": import_modelloop, "raw": import_modelloop}


# ---------------------------------------------------------------------------------------------------
# Child process: load, reset the peak, run, measure.

def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def child(tool: str, folder: Path, repeats: int) -> dict:
    import resource

    IMPORTS[tool]()
    reference, current = load_frames(folder)
    gc.collect()
    baseline_kib = _status_kib("VmRSS")
    reset = _reset_peak() and baseline_kib is not None
    if not reset:
        baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    RUNNERS[tool](reference, current)  # the warm-up: caches, lazy imports, first allocations; not timed
    gc.collect()
    times, parts = [], []
    for i in range(repeats):
        start = time.perf_counter()
        flagged, dataset_drift, extra = RUNNERS[tool](reference, current)
        times.append(time.perf_counter() - start)
        if "run_seconds" in extra:
            parts.append(extra.pop("run_seconds"))
        if i == 0:
            peak_kib = _status_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        gc.collect()
    result = {"seconds": float(np.median(times)), "runs": [round(t, 4) for t in times],
              "peak_mib_delta": max(peak_kib - baseline_kib, 0) / 1024, "baseline_mib": baseline_kib / 1024,
              "memory_method": "VmHWM after clear_refs (includes the warm-up run)" if reset
              else "ru_maxrss (includes loading)",
              "flagged": sorted(flagged, key=_column_order), "dataset_drift": bool(dataset_drift), **extra}
    if parts:
        result.update(seconds_without_report_object=float(np.median(parts)), runs_without_report_object=[
            round(t, 4) for t in parts])
    return result


def _column_order(name: str) -> tuple:
    kind, index = name.split("_")
    return (kind != "num", int(index))


# ---------------------------------------------------------------------------------------------------
# Parent: venv, data, subprocesses, table, JSON.

def ensure_evidently() -> Path:
    python = EVIDENTLY_VENV / "bin" / "python"
    probe = [str(python), "-c", "import evidently, pandas; assert evidently.__version__ == '0.7.23'"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    print(f"creating {EVIDENTLY_VENV} ({' '.join(EVIDENTLY_REQUIREMENTS)}) ...", flush=True)
    base = shutil.which("python3.11") or sys.executable
    subprocess.run([base, "-m", "venv", str(EVIDENTLY_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *EVIDENTLY_REQUIREMENTS], check=True)
    return python


def run_child(python: Path, tool: str, folder: Path, repeats: int) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([str(python), __file__, "--child", tool, "--data", str(folder), "--repeats", str(repeats)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{tool} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="100000,1000000", help="comma-separated window sizes")
    parser.add_argument("--tools", default=",".join(TOOLS), help=f"comma-separated subset of {','.join(TOOLS)}")
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--output", default=str(RESULTS))
    parser.add_argument("--child", choices=TOOLS, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, Path(args.data), args.repeats)))
        return

    tools = [t for t in args.tools.split(",") if t]
    unknown = set(tools) - set(TOOLS)
    if unknown:
        parser.error(f"unknown tools {sorted(unknown)}; choose from {list(TOOLS)}")
    evidently_python = ensure_evidently() if "evidently" in tools else None
    expected = SHIFTED + CHANGED
    output = Path(args.output)
    results: dict = {"benchmark": "drift engines: Evidently DataDriftPreset, a scipy loop, modelloop sketches and raw "
                                  "tests, on the same data in the same run", **run_facts()}
    for rows in (int(r) for r in args.rows.split(",")):
        with tempfile.TemporaryDirectory(prefix="modelloop-drift-bench-") as tmp:
            folder = Path(tmp)
            write_data(rows, folder)
            measured = {}
            for tool in tools:
                python = evidently_python if tool == "evidently" else Path(sys.executable)
                print(f"rows={rows} tool={tool} ...", flush=True)
                measured[tool] = run_child(python, tool, folder, args.repeats)
        print_table(rows, measured, expected)
        results[f"rows_{rows}"] = summarise(rows, measured, expected)
    results["method"] = {
        "tools": {t: LABELS[t] for t in tools}, "expected_flagged": expected,
        "wall_time": f"median of {args.repeats} timed runs after one untimed warm-up run, the same for every tool",
        "evidently_timed_region": "evidently_s: Report.run and reading the flags from snapshot.dict() (its report "
                                  "object); evidently_run_only_s: Report.run alone",
        "memory": "peak RSS growth over RSS after loading the data, per tool in its own process",
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()]}
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {output}")


def print_table(rows: int, measured: dict, expected: list[str]) -> None:
    print(f"\n== {rows:,} rows per window; expected flags: {', '.join(expected)}")
    print(f"{'tool':32s} {'wall s':>9s} {'peak MiB+':>10s} {'flags ok':>8s} {'dataset':>8s}  flagged")
    for tool, m in measured.items():
        ok = "yes" if m["flagged"] == expected else "NO"
        print(f"{LABELS[tool]:32s} {m['seconds']:9.3f} {m['peak_mib_delta']:10.1f} {ok:>8s} "
              f"{str(m['dataset_drift']):>8s}  {','.join(m['flagged'])}")
    ev = measured.get("evidently")
    for tool in ("sketch", "raw"):
        m = measured.get(tool)
        if not m:
            continue
        parts = []
        if ev:
            parts.append(f"{ev['seconds'] / m['seconds']:.1f}x faster than Evidently"
                         + (f" ({ev['seconds_without_report_object'] / m['seconds']:.1f}x of Report.run alone)"
                            if ev.get("seconds_without_report_object") else ""))
            if ev["peak_mib_delta"] > 0:
                parts.append(f"peak growth {100 * m['peak_mib_delta'] / ev['peak_mib_delta']:.1f}% of Evidently's")
        if "scipy" in measured:
            parts.append(f"{measured['scipy']['seconds'] / m['seconds']:.1f}x faster than scipy")
        print(f"  {LABELS[tool]}: " + "; ".join(parts))
    print()


def summarise(rows: int, measured: dict, expected: list[str]) -> dict:
    out: dict = {"runs": {tool: m["runs"] for tool, m in measured.items()}}
    ev, sc, sk, raw = (measured.get(t) for t in TOOLS)
    if ev:
        out.update(evidently_s=ev["seconds"], evidently_run_only_s=ev.get("seconds_without_report_object"),
                   evidently_peak_mib_delta=ev["peak_mib_delta"],
                   evidently_flagged=ev["flagged"], evidently_dataset_drift=ev["dataset_drift"],
                   evidently_methods=ev.get("methods"))
    if sc:
        out.update(scipy_s=sc["seconds"], scipy_peak_mib_delta=sc["peak_mib_delta"], scipy_flagged=sc["flagged"],
                   scipy_psi_flagged=sc.get("psi_flagged"))
    if sk:
        out.update(modelloop_s=sk["seconds"], modelloop_peak_mib_delta=sk["peak_mib_delta"], flagged=sk["flagged"],
                   dataset_drift=sk["dataset_drift"], sketch_bytes=sk.get("sketch_bytes"))
    if raw:
        out.update(modelloop_raw_s=raw["seconds"], modelloop_raw_peak_mib_delta=raw["peak_mib_delta"],
                   modelloop_raw_flagged=raw["flagged"], modelloop_raw_dataset_drift=raw["dataset_drift"])
    if out.get("evidently_s") and out.get("modelloop_s"):
        out["speedup_vs_evidently"] = out["evidently_s"] / out["modelloop_s"]
        if out.get("evidently_run_only_s"):
            out["speedup_vs_evidently_run_only"] = out["evidently_run_only_s"] / out["modelloop_s"]
        if out.get("modelloop_raw_s"):
            out["raw_speedup_vs_evidently"] = out["evidently_s"] / out["modelloop_raw_s"]
        if out.get("evidently_peak_mib_delta"):
            out["peak_ratio_vs_evidently"] = out["modelloop_peak_mib_delta"] / out["evidently_peak_mib_delta"]
    if out.get("scipy_s") and out.get("modelloop_s"):
        out["speedup_vs_scipy"] = out["scipy_s"] / out["modelloop_s"]
        if out.get("modelloop_raw_s"):
            out["raw_speedup_vs_scipy"] = out["scipy_s"] / out["modelloop_raw_s"]
    out["rows"] = rows
    out["flags_exact"] = out.get("flagged") == expected
    out["memory_method"] = next(iter(measured.values()))["memory_method"]
    out["loadavg_1m_after"] = round(os.getloadavg()[0], 2)  # 2 shared cores: other work slows every tool
    return out


if __name__ == "__main__":
    main()
