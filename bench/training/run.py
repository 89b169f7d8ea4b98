"""Trainer vs a plain script: the real `modelloop-train` CLI end to end against a plain script doing the
same fit (same data, split, estimator, params, seed) and saving the model as its library does, each run in
its own process, median of N; for scikit-learn's HistGradientBoostingClassifier, XGBoost's XGBClassifier and
LightGBM's LGBMClassifier.

    .venv/bin/python bench/training/run.py [--rows 200000] [--features 20] [--runs 3] [--threads 1]
                                           [--estimators sklearn,xgboost,lightgbm]

Prints a table and writes bench/results/training.json ({"estimators": {name: {"trainer_s", "plain_s",
"ratio", ...}}, ...}). The difference is the trainer's overhead: validation, metrics beyond accuracy,
reference sketches, calibration, serialisation (skops, or the library's format), the ONNX export and its
parity check, hashing, the commit protocol and its imports.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from bench.measured import commit_measured  # noqa: E402
RESULTS = ROOT / "bench" / "results" / "training.json"
BIN = Path(sys.executable).parent
# name -> (class, params): the same model size for the three (100 rounds of trees of at most 31 leaves).
ESTIMATORS = {
    "sklearn": ("sklearn.ensemble.HistGradientBoostingClassifier",
                {"max_iter": 100, "learning_rate": 0.1, "max_leaf_nodes": 31}),
    "xgboost": ("xgboost.XGBClassifier", {"n_estimators": 100, "learning_rate": 0.1, "max_leaves": 31,
                                          "grow_policy": "lossguide", "tree_method": "hist"}),
    "lightgbm": ("lightgbm.LGBMClassifier", {"n_estimators": 100, "learning_rate": 0.1, "num_leaves": 31,
                                             "verbose": -1}),
}
TEST_SIZE, SEED, TARGET = 0.2, 42, "label"


def make_dataset(path: Path, rows: int, features: int) -> None:
    import pandas as pd
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=rows, n_features=features, n_informative=max(2, features // 2),
                               random_state=0)
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(features)])
    frame[TARGET] = y
    frame.to_csv(path, index=False, float_format="%.6g")


@dataclass
class Run:
    wall_s: float
    cpu_s: float  # user + system of the process (all its threads)
    proc: subprocess.CompletedProcess


def timed(command: list[str], env: dict[str, str]) -> Run:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"{command[0]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Run(elapsed, cpu, proc)


def step_seconds(stderr: str) -> dict[str, float]:
    """The trainer's own per-step timings from its key=value log lines."""
    steps = {}
    for line in stderr.splitlines():
        event, seconds = re.search(r" event=(\S+)", line), re.search(r" seconds=([0-9.]+)", line)
        if event and seconds:
            steps[event[1]] = float(seconds[1])
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="OMP threads for both sides (1: stable numbers on a shared machine)")
    parser.add_argument("--estimators", default=",".join(ESTIMATORS),
                        help=f"comma-separated, of {', '.join(ESTIMATORS)}")
    args = parser.parse_args()
    chosen = args.estimators.split(",")
    unknown = sorted(set(chosen) - set(ESTIMATORS))
    if unknown:
        parser.error(f"--estimators: unknown {', '.join(unknown)}")

    load_at_start = round(os.getloadavg()[0], 2)
    work = Path(tempfile.mkdtemp(prefix="modelloop-bench-training-"))
    results = {}
    try:
        data = work / "train.csv"
        make_dataset(data, args.rows, args.features)
        for name in chosen:
            results[name] = compare(name, work, data, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    result = {
        "estimators": results,
        "dataset": {"rows": args.rows, "features": args.features, "format": "csv"},
        "machine": {"cpus": os.cpu_count(), "load_1m_at_start": load_at_start,
                    "load_1m_at_end": round(os.getloadavg()[0], 2),
                    "omp_threads": args.threads, "python": platform.python_version()},
        "runs": args.runs,
        "commit": commit_measured(),
        "method": ("per estimator, each side a fresh process per run, interleaved (trainer, plain, trainer, ...), "
                   "median after one warm-up run each; trainer = modelloop-train CLI end to end (file:// CSV, "
                   "validation, accuracy+f1+roc_auc, reference sketches, calibration, skops or the library's "
                   "model format, model.onnx and its parity check, sha256, commit); plain = pandas.read_csv, same "
                   "stratified split, same estimator/params/seed, accuracy, saved as its library does "
                   "(joblib, XGBoost JSON, LightGBM text); cpu = user+sys of the process"),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")

    print(f"{'':34}{'wall s':>8}{'cpu s':>8}  wall of each run")
    for name, row in results.items():
        for side in ("trainer", "plain"):
            times = row[f"{side}_runs_s"]
            print(f"{name + ' ' + ('modelloop-train' if side == 'trainer' else 'plain script'):34}"
                  f"{row[f'{side}_s']:>8.2f}{row[f'{side}_cpu_s']:>8.2f}  {', '.join(f'{t:.2f}' for t in times)}")
        print(f"{name}: ratio {row['ratio']:.3f} wall (target <= 1.1), {row['cpu_ratio']:.3f} cpu; overhead "
              f"{row['overhead_s']:+.2f} s; same fit: {row['same_fit']}; trainer steps (median s): "
              + ", ".join(f"{k}={v}" for k, v in row["trainer_steps_s"].items()))
    print(f"load {load_at_start} -> {result['machine']['load_1m_at_end']}; wrote {RESULTS.relative_to(ROOT)}")


def compare(name: str, work: Path, data: Path, args: argparse.Namespace) -> dict:
    """One estimator: the trainer and the plain script, interleaved."""
    estimator, params = ESTIMATORS[name]
    params = {**params, "n_jobs": args.threads} if name != "sklearn" else params
    folder = work / name
    folder.mkdir()
    spec = {"dataset": {"uri": f"file://{data}", "target": TARGET},
            "estimator": {"class": estimator, "params": params},
            "validation": {"testSize": TEST_SIZE, "seed": SEED}, "output": {"uri": f"file://{folder}/models"}}
    (folder / "spec.json").write_text(json.dumps(spec))
    # Bytecode caches for both sides, written by the warm-up runs (the images hold compiled bytecode): without
    # them every run compiles what it imports, and the trainer imports more modules than the plain script.
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONHASHSEED": "0",
           "PYTHONPYCACHEPREFIX": str(work / "pycache")}
    env.pop("MODELLOOP_TERMINATION_LOG", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)

    def trainer(version: int) -> Run:
        return timed([str(BIN / "modelloop-train"), "--version", str(version), "--spec-file",
                      str(folder / "spec.json"), "--termination-log", str(folder / f"termination-{version}")], env)

    def plain(run: int) -> Run:
        return timed([sys.executable, str(Path(__file__).with_name("plain.py")), str(data), TARGET, estimator,
                      json.dumps(params), str(TEST_SIZE), str(SEED), str(folder / f"plain-{run}")], env)

    trainer(1000), plain(1000)  # warm-up: page cache, bytecode caches (shared by the estimators' rows)
    trainer_runs, plain_runs = [], []
    for run in range(1, args.runs + 1):  # interleaved so that machine load hits both sides alike
        trainer_runs.append(trainer(run))
        plain_runs.append(plain(run))
    plain_accuracy = json.loads(plain_runs[-1].proc.stdout)["accuracy"]
    metadata = json.loads((folder / "models" / f"v{args.runs}" / "metadata.json").read_text())

    trainer_times, plain_times = [r.wall_s for r in trainer_runs], [r.wall_s for r in plain_runs]
    trainer_s, plain_s = statistics.median(trainer_times), statistics.median(plain_times)
    trainer_cpu = statistics.median(r.cpu_s for r in trainer_runs)
    plain_cpu = statistics.median(r.cpu_s for r in plain_runs)
    steps = [step_seconds(r.proc.stderr) for r in trainer_runs]
    return {
        "estimator": {"class": estimator, "params": {**params, "random_state": SEED}},
        "trainer_s": round(trainer_s, 3), "plain_s": round(plain_s, 3), "ratio": round(trainer_s / plain_s, 3),
        "overhead_s": round(trainer_s - plain_s, 3),
        "trainer_cpu_s": round(trainer_cpu, 3), "plain_cpu_s": round(plain_cpu, 3),
        "cpu_ratio": round(trainer_cpu / plain_cpu, 3),
        "trainer_runs_s": [round(t, 3) for t in trainer_times], "plain_runs_s": [round(t, 3) for t in plain_times],
        "trainer_steps_s": {step: round(statistics.median(s.get(step, 0.0) for s in steps), 3) for step in steps[0]},
        "same_fit": metadata["metrics"]["accuracy"] == plain_accuracy,
        "accuracy": {"trainer": metadata["metrics"]["accuracy"], "plain": plain_accuracy},
        "onnx_parity": metadata["onnx"].get("parity"),
    }


if __name__ == "__main__":
    main()
