"""Writes examples/data/churn.csv (and, with --drifted, a drifted variant): a small synthetic
customer-churn table with numeric and categorical features. Deterministic (seeded)."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd


def churn(rows: int, seed: int, drifted: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    tenure = rng.gamma(2.0, 12.0, rows).round(1)
    charges = rng.normal(70 if not drifted else 95, 20, rows).round(2)
    calls = rng.poisson(1.5 if not drifted else 3.5, rows)
    plan = rng.choice(["basic", "plus", "premium"], rows, p=[0.5, 0.3, 0.2] if not drifted else [0.2, 0.3, 0.5])
    region = rng.choice(["north", "south", "east", "west"], rows)
    logit = -1.0 - 0.06 * tenure + 0.03 * (charges - 70) + 0.5 * calls + np.where(plan == "basic", 0.4, -0.2)
    churned = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    return pd.DataFrame({"tenure_months": tenure, "monthly_charges": charges, "support_calls": calls,
                         "plan": plan, "region": region, "churned": churned})


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--drifted", action="store_true")
    p.add_argument("--out", type=Path, default=Path(__file__).with_name("churn.csv"))
    a = p.parse_args()
    churn(a.rows, a.seed, a.drifted).to_csv(a.out, index=False)
