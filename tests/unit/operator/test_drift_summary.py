"""The DriftDetected message names what moved: a feature's score, and its missing share when that drifted."""
from __future__ import annotations

import numpy as np

from modelloop.retrain import summarize
from modelloop.drift import build_reference, count_into, detect, empty_like


def test_a_feature_drifted_by_its_missing_share_says_so():
    rng = np.random.default_rng(3)
    ref = build_reference({"x": rng.standard_normal(100_000), "y": rng.standard_normal(100_000)})
    x = rng.standard_normal(100_000)
    x[:4_900] = np.nan
    report = detect(ref, count_into(empty_like(ref), {"x": x, "y": rng.standard_normal(100_000) + 1.0})).to_dict()
    message = summarize(report)
    head, top = message.split(": ")
    assert head == "2 of 2 features drifted (share 1.00) in 100000 rows"
    y, x = top.split(", ")  # by score, largest first
    assert y.startswith("y wasserstein=") and "missing" not in y
    assert x.startswith("x wasserstein=") and x.endswith(" missing 0.0%->4.9%")
