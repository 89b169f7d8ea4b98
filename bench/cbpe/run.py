"""Confidence-based performance estimation (modelloop.outcomes.cbpe): label-free accuracy against the true one.

    .venv/bin/python bench/cbpe/run.py [--seeds 5] [--output bench/results/cbpe.json]

For each dataset and model: train on a source sample, fit the calibration on a hold-out from the same source
(as the trainer does), then build target sets and compare the estimate (mean calibrated confidence of the
predicted class) with the true accuracy (the labels, which the estimate never sees).

Datasets (seeded):
- churn: examples/data/make_churn.py's generator (numeric and categorical features, binary);
- synthetic-2 / synthetic-3: sklearn make_classification (8 features, 2 and 3 classes, 2 clusters per class,
  5% flipped labels). One draw is split into train, hold-out and a pool (make_classification's clusters depend
  on the number of rows drawn, so every part must come from the same draw).

Models: RandomForestClassifier (min_samples_leaf=5) and LogisticRegression (one-hot categories, scaled numbers).

Target sets:
- covariate: importance resampling of a large pool from the same generator, rows drawn without replacement
  with weights exp(a * z), z a standardised feature (or projection of the features): selection that looks at x
  only, so P(y|x) is unchanged; plus churn's own `drifted=True` population (other charges, calls and plans,
  same relation);
- covariate, toward the boundary (churn): weights exp(-1.5 |true logit|), x only as well, but aimed at the rows
  the model finds hardest;
- concept: P(y|x) changes. churn with concept=True (a competitor in two regions decides most churn), alone and
  with drifted=True; synthetic: the labels of one half-space shifted to the next class.

Writes --output (default bench/results/cbpe.json): every row of every seed, a summary per (dataset, model,
shift kind) over the seeds, the commit measured and the date. The unit test
(tests/unit/outcomes/test_cbpe.py) runs FAST, a smaller version of the same evaluation.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
for path in (ROOT, ROOT / "operator"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from bench.measured import commit_measured  # noqa: E402
from examples.data.make_churn import churn  # noqa: E402
from modelloop.outcomes.cbpe import calibrate, estimate_accuracy, fit_calibration  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "cbpe.json"
CHURN_FEATURES = ["tenure_months", "monthly_charges", "support_calls", "plan", "region"]
CHURN_CATEGORICAL = ["plan", "region"]
CHURN_TARGET = "churned"


@dataclass(frozen=True)
class Config:
    train_rows: int = 5000
    holdout_rows: int = 5000
    pool_rows: int = 200_000
    target_rows: int = 10_000
    trees: int = 100
    datasets: tuple[str, ...] = ("churn", "synthetic-2", "synthetic-3")
    models: dict[str, tuple[str, ...]] = field(default_factory=lambda: {
        "churn": ("random_forest", "logistic"), "synthetic-2": ("random_forest", "logistic"),
        "synthetic-3": ("random_forest", "logistic")})
    shifts: dict[str, tuple[str, ...]] | None = None  # per dataset, the shifts to run (None: all)


FULL = Config()
# The unit test's version: fewer rows, fewer trees, a few shifts; the property asserted is the same.
FAST = Config(train_rows=3000, holdout_rows=2500, pool_rows=40_000, target_rows=5000, trees=40,
              datasets=("churn", "synthetic-3"),
              models={"churn": ("random_forest", "logistic"), "synthetic-3": ("random_forest",)},
              shifts={"churn": ("tenure -1sd", "charges +1sd", "calls +1sd", "concept"),
                      "synthetic-3": ("dir0 +1sd", "dir1 -1sd", "concept")})


@dataclass(frozen=True)
class Target:
    shift: str
    kind: str      # none | covariate | covariate-boundary | concept
    x: Any
    y: np.ndarray


@dataclass(frozen=True)
class Data:
    name: str
    categorical: list[str]
    train: tuple[Any, np.ndarray]
    holdout: tuple[Any, np.ndarray]
    targets: list[Target]


# ---------------------------------------------------------------------------------------------------
# Data

def _resample(pool_x: Any, pool_y: np.ndarray, log_weight: np.ndarray, rows: int, rng: np.random.Generator
              ) -> tuple[Any, np.ndarray]:
    """`rows` rows of the pool drawn without replacement with weights exp(log_weight): x-only selection."""
    w = np.exp(log_weight - log_weight.max())
    index = rng.choice(len(pool_y), size=rows, replace=False, p=w / w.sum())
    return (pool_x.iloc[index] if isinstance(pool_x, pd.DataFrame) else pool_x[index]), pool_y[index]


def _z(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return (values - values.mean()) / values.std()


def _churn_logit(frame: pd.DataFrame) -> np.ndarray:
    """The generator's (unchanged) logit: a function of x only."""
    return (-1.0 - 0.06 * frame["tenure_months"] + 0.03 * (frame["monthly_charges"] - 70)
            + 0.5 * frame["support_calls"] + np.where(frame["plan"] == "basic", 0.4, -0.2)).to_numpy()


def churn_data(cfg: Config, seed: int, wanted: tuple[str, ...] | None) -> Data:
    source = churn(cfg.train_rows + cfg.holdout_rows, 1000 + seed)
    train, holdout = source.iloc[:cfg.train_rows], source.iloc[cfg.train_rows:]
    pool = churn(cfg.pool_rows, 2000 + seed)
    px, py = pool[CHURN_FEATURES], pool[CHURN_TARGET].to_numpy()
    rng = np.random.default_rng([3000, seed])
    tilts: dict[str, tuple[str, Callable[[], np.ndarray]]] = {
        "none": ("none", lambda: np.zeros(len(pool))),
        "tenure -1sd": ("covariate", lambda: -_z(pool["tenure_months"])),
        "charges +1sd": ("covariate", lambda: _z(pool["monthly_charges"])),
        "calls +1sd": ("covariate", lambda: _z(pool["support_calls"])),
        "premium x3": ("covariate", lambda: np.where(pool["plan"] == "premium", np.log(3.0), 0.0)),
        "toward boundary": ("covariate-boundary", lambda: -1.5 * np.abs(_churn_logit(pool))),
    }
    generated = {"generator drifted": ("covariate", True, False), "concept": ("concept", False, True),
                 "drifted + concept": ("concept", True, True)}
    targets = []
    for shift, (kind, weight) in tilts.items():
        if wanted is None or shift in wanted:
            x, y = _resample(px, py, weight(), cfg.target_rows, rng)
            targets.append(Target(shift, kind, x, y))
    for i, (shift, (kind, drifted, concept)) in enumerate(generated.items()):
        if wanted is None or shift in wanted:
            frame = churn(cfg.target_rows, 4000 + 10 * seed + i, drifted=drifted, concept=concept)
            targets.append(Target(shift, kind, frame[CHURN_FEATURES], frame[CHURN_TARGET].to_numpy()))
    return Data("churn", CHURN_CATEGORICAL, (train[CHURN_FEATURES], train[CHURN_TARGET].to_numpy()),
                (holdout[CHURN_FEATURES], holdout[CHURN_TARGET].to_numpy()), targets)


def synthetic_data(classes: int, cfg: Config, seed: int, wanted: tuple[str, ...] | None) -> Data:
    from sklearn.datasets import make_classification

    n_source = cfg.train_rows + cfg.holdout_rows
    x, y = make_classification(n_source + cfg.pool_rows, n_features=8, n_informative=5, n_redundant=1,
                               n_classes=classes, n_clusters_per_class=2, flip_y=0.05, class_sep=1.0,
                               random_state=5000 + 10 * seed + classes)
    train = (x[:cfg.train_rows], y[:cfg.train_rows])
    holdout = (x[cfg.train_rows:n_source], y[cfg.train_rows:n_source])
    px, py = x[n_source:], y[n_source:]
    rng = np.random.default_rng([6000, seed, classes])
    directions = rng.standard_normal((3, x.shape[1]))
    targets = []
    shifts: dict[str, tuple[str, np.ndarray]] = {"none": ("none", np.zeros(len(py)))}
    for j, d in enumerate(directions):
        z = _z(px @ d)
        shifts[f"dir{j} +1sd"], shifts[f"dir{j} -1sd"] = ("covariate", z), ("covariate", -z)
    for shift, (kind, weight) in shifts.items():
        if wanted is None or shift in wanted:
            targets.append(Target(shift, kind, *_resample(px, py, weight, cfg.target_rows, rng)))
    if wanted is None or "concept" in wanted:  # same x as the unshifted pool, labels of one half-space moved on
        tx, ty = _resample(px, py, np.zeros(len(py)), cfg.target_rows, rng)
        side = (tx @ directions[0]) > np.median(px @ directions[0])
        targets.append(Target("concept", "concept", tx, np.where(side, (ty + 1) % classes, ty)))
    return Data(f"synthetic-{classes}", [], train, holdout, targets)


DATASETS: dict[str, Callable[[Config, int, tuple[str, ...] | None], Data]] = {
    "churn": churn_data,
    "synthetic-2": lambda cfg, seed, wanted: synthetic_data(2, cfg, seed, wanted),
    "synthetic-3": lambda cfg, seed, wanted: synthetic_data(3, cfg, seed, wanted),
}


# ---------------------------------------------------------------------------------------------------
# Models

def build_model(name: str, categorical: list[str], cfg: Config, seed: int) -> Any:
    from sklearn.compose import make_column_transformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    if name == "random_forest":
        estimator = RandomForestClassifier(n_estimators=cfg.trees, min_samples_leaf=5, random_state=seed, n_jobs=1)
        scale = False
    else:
        estimator, scale = LogisticRegression(max_iter=2000), True
    if categorical:
        numeric = [c for c in CHURN_FEATURES if c not in categorical]
        encode = make_column_transformer((OneHotEncoder(handle_unknown="ignore"), categorical),
                                         (StandardScaler() if scale else "passthrough", numeric))
        return make_pipeline(encode, estimator)
    return make_pipeline(StandardScaler(), estimator) if scale else estimator


def confidence_and_correct(model: Any, x: Any, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the server records (the most probable class's probability) and whether predict() was right."""
    return model.predict_proba(x).max(axis=1), model.predict(x) == y


# ---------------------------------------------------------------------------------------------------
# The evaluation

def evaluate(cfg: Config, seed: int = 0) -> list[dict[str, Any]]:
    """One row per (dataset, model, shift): true and estimated accuracy and the error in points."""
    rows = []
    for dataset in cfg.datasets:
        wanted = cfg.shifts.get(dataset) if cfg.shifts is not None else None
        data = DATASETS[dataset](cfg, seed, wanted)
        for model_name in cfg.models[dataset]:
            model = build_model(model_name, data.categorical, cfg, seed).fit(*data.train)
            holdout_conf, holdout_correct = confidence_and_correct(model, *data.holdout)
            calibration = fit_calibration(holdout_conf, holdout_correct)
            for target in data.targets:
                confidence, correct = confidence_and_correct(model, target.x, target.y)
                estimate = estimate_accuracy(calibrate(calibration, confidence))
                true = float(correct.mean())
                rows.append({
                    "seed": seed, "dataset": dataset, "model": model_name, "shift": target.shift,
                    "kind": target.kind, "rows": int(len(target.y)),
                    "holdout_accuracy": round(float(holdout_correct.mean()), 4),
                    "true_accuracy": round(true, 4), "estimated_accuracy": round(estimate["value"], 4),
                    "low": round(estimate["low"], 4), "high": round(estimate["high"], 4),
                    "raw_confidence": round(float(confidence.mean()), 4),
                    "abs_error_points": round(100 * abs(estimate["value"] - true), 2),
                    "calibration": calibration["method"], "ece_before": calibration["eceBefore"],
                    "ece_isotonic": calibration["eceIsotonic"],
                })
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (dataset, model, kind) over every seed and shift: mean and max error in points."""
    frame = pd.DataFrame(rows)
    out = []
    for (dataset, model, kind), part in frame.groupby(["dataset", "model", "kind"], sort=False):
        errors = part["abs_error_points"]
        out.append({"dataset": dataset, "model": model, "kind": kind, "cases": int(len(part)),
                    "mean_abs_error_points": round(float(errors.mean()), 2),
                    "max_abs_error_points": round(float(errors.max()), 2),
                    "within_3_points": f"{int((errors <= 3).sum())}/{len(part)}"})
    return out


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| dataset | model | shift | kind | true acc | estimated [95%] | raw conf | abs error (points) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['model']} | {r['shift']} | {r['kind']} | {r['true_accuracy']:.3f} | "
                     f"{r['estimated_accuracy']:.3f} [{r['low']:.3f}, {r['high']:.3f}] | {r['raw_confidence']:.3f} | "
                     f"{r['abs_error_points']:.1f} |")
    return "\n".join(lines)


def format_summary(summary: list[dict[str, Any]], seeds: int) -> str:
    lines = [f"| dataset | model | kind | cases ({seeds} seeds) | mean abs error | max abs error | within 3 points |",
             "|---|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {s['dataset']} | {s['model']} | {s['kind']} | {s['cases']} | "
                     f"{s['mean_abs_error_points']:.1f} | {s['max_abs_error_points']:.1f} | {s['within_3_points']} |")
    return "\n".join(lines)



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5, help="independent repetitions (data, models, targets)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for seed in range(args.seeds):
        rows += evaluate(FULL, seed)
        print(f"seed {seed} done ({time.perf_counter() - started:.0f} s)", flush=True)
    summary = summarise(rows)
    first = [r for r in rows if r["seed"] == 0]
    print("\n== seed 0\n" + format_table(first))
    print("\n== every seed\n" + format_summary(summary, args.seeds))
    document = {
        "commit": commit_measured(("operator/modelloop/outcomes", "bench/cbpe", "examples/data/make_churn.py")),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": {k: v for k, v in FULL.__dict__.items()}, "seeds": args.seeds,
        "python": platform.python_version(), "cpus": os.cpu_count(),
        "seconds": round(time.perf_counter() - started, 1),
        "error": "abs_error_points = 100 * |estimated - true accuracy|",
        "summary": summary, "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
