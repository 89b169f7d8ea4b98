"""Writes examples/data/churn.csv (and, with --drifted, a drifted variant; with --concept, a changed relation
between the same kind of customers and churning): a small synthetic customer-churn table with numeric and
categorical features. Deterministic (seeded).

The files `make demo` uses:
    churn.csv                  --seed 7                      the training data of v1
    churn-drifted.csv          --seed 8 --drifted            the population after a change (inputs drift)
    churn-concept.csv          --seed 11 --drifted --concept  the same population; a competitor in the south and
                                                             east makes customers there churn (labels change)
    churn-concept-fresh.csv    --seed 13 --drifted --concept  fresh labelled data to retrain on
    churn-shifted.csv          --seed 17 --concept            inputs shift back, the relation stays: harmless
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd


def churn(rows: int, seed: int, drifted: bool = False, concept: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    tenure = rng.gamma(2.0, 12.0, rows).round(1)
    charges = rng.normal(70 if not drifted else 95, 20, rows).round(2)
    calls = rng.poisson(1.5 if not drifted else 3.5, rows)
    plan = rng.choice(["basic", "plus", "premium"], rows, p=[0.5, 0.3, 0.2] if not drifted else [0.2, 0.3, 0.5])
    region = rng.choice(["north", "south", "east", "west"], rows)
    logit = -1.0 - 0.06 * tenure + 0.03 * (charges - 70) + 0.5 * calls + np.where(plan == "basic", 0.4, -0.2)
    if concept:  # the same customers, a new reason to leave: a competitor in two regions decides most of it
        logit = 0.3 * logit + np.where((region == "south") | (region == "east"), 2.5, -2.5)
    churned = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    return pd.DataFrame({"tenure_months": tenure, "monthly_charges": charges, "support_calls": calls,
                         "plan": plan, "region": region, "churned": churned})


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--drifted", action="store_true")
    p.add_argument("--concept", action="store_true")
    p.add_argument("--out", type=Path, default=Path(__file__).with_name("churn.csv"))
    a = p.parse_args()
    churn(a.rows, a.seed, a.drifted, a.concept).to_csv(a.out, index=False)
