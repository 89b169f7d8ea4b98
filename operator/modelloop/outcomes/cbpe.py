"""Confidence-based performance estimation (CBPE): a classifier's accuracy on live traffic without labels.

For each prediction, P(correct) is the calibrated probability of the predicted class; the expected accuracy
of a window is the mean of those (docs/cbpe.md). The trainer fits the calibration on the hold-out split
(`fit_calibration`, the only function that needs scikit-learn, imported inside it) and ships it in
metadata.json under `calibration`; a reader checks it with `validate_calibration` (metadata comes from a
store: untrusted) and applies it with `calibrate` and `estimate_accuracy` (numpy only).

The calibration document:
    {"method": "isotonic" | "identity",
     "x": [...], "y": [...],        # isotonic: the step function's thresholds (non-decreasing, in [0, 1]);
                                    # identity: both empty
     "eceBefore": float,            # ECE of the raw confidence on the hold-out
     "eceAfter": float,             # ECE of what is shipped: the cross-fitted isotonic ECE, or eceBefore
     "eceIsotonic": float,          # cross-fitted (2-fold) ECE of the isotonic fit, whichever was kept
     "rows": int}                   # hold-out rows it was fitted on
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

METHODS = ("isotonic", "identity")
MAX_POINTS = 1000
MIN_ROWS = 100      # fewer hold-out rows than this: identity (too few to fit and to judge a fit)
ECE_BINS = 10
Z95 = 1.959963984540054
_SEED = 20261127    # the cross-fitting split: deterministic, so a retrain on the same data ships the same map


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE over equal-count bins of the confidence: sum over bins of (bin rows / rows) * |mean confidence -
    accuracy|. Equal-count bins because max-probability confidence lives in [1/k, 1], mostly near its top."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    n = len(confidence)
    if n == 0:
        return 0.0
    order = np.argsort(confidence, kind="stable")
    total = 0.0
    for chunk in np.array_split(order, min(bins, n)):
        if len(chunk):
            total += len(chunk) * abs(float(confidence[chunk].mean()) - float(correct[chunk].mean()))
    return total / n


def fit_calibration(confidence: np.ndarray, correct: np.ndarray) -> dict[str, Any]:
    """Isotonic regression of correct (0/1) on confidence (the predicted class's probability) over the hold-out,
    kept only when its cross-fitted (2-fold) ECE is lower than the raw confidence's; identity otherwise.

    In-sample, isotonic regression always lowers the ECE (it fits the very bins being measured), so the fit is
    judged on the half it did not see: fit on one half, predict the other, both ways. The shipped map is then
    fitted on every row."""
    from sklearn.isotonic import IsotonicRegression

    confidence = np.asarray(confidence, dtype=np.float64).reshape(-1)
    correct = np.asarray(correct).reshape(-1).astype(np.float64)
    if len(confidence) != len(correct):
        raise ValueError(f"confidence has {len(confidence)} rows, correct {len(correct)}")
    keep = np.isfinite(confidence) & np.isfinite(correct)
    confidence, correct = np.clip(confidence[keep], 0.0, 1.0), correct[keep]
    if not np.isin(correct, (0.0, 1.0)).all():
        raise ValueError("correct must be 0 or 1")
    n = len(confidence)
    before = expected_calibration_error(confidence, correct)
    identity = {"method": "identity", "x": [], "y": [], "eceBefore": before, "eceAfter": before,
                "eceIsotonic": None, "rows": n}
    if n < MIN_ROWS:
        return _clean(identity)

    def isotonic() -> Any:
        return IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0, increasing=True)

    halves = np.array_split(np.random.default_rng(_SEED).permutation(n), 2)
    crossed = np.empty(n)
    for fit_on, predict_on in ((halves[0], halves[1]), (halves[1], halves[0])):
        crossed[predict_on] = isotonic().fit(confidence[fit_on], correct[fit_on]).predict(confidence[predict_on])
    after = expected_calibration_error(crossed, correct)
    identity["eceIsotonic"] = after
    if not after < before:
        return _clean(identity)
    fitted = isotonic().fit(confidence, correct)
    x, y = _downsample(np.asarray(fitted.X_thresholds_, np.float64), np.asarray(fitted.y_thresholds_, np.float64))
    return _clean({"method": "isotonic", "x": x.tolist(), "y": y.tolist(), "eceBefore": before, "eceAfter": after,
                   "eceIsotonic": after, "rows": n})


def calibrate(calibration: dict[str, Any], confidence: np.ndarray) -> np.ndarray:
    """The calibrated probability of each prediction being correct (NaN stays NaN: unknown confidence).
    `calibration` must have passed `validate_calibration`."""
    confidence = np.asarray(confidence, dtype=np.float64)
    if calibration["method"] == "identity":
        return np.clip(confidence, 0.0, 1.0)
    return np.interp(confidence, np.asarray(calibration["x"], np.float64), np.asarray(calibration["y"], np.float64))


def estimate_accuracy(calibrated: np.ndarray) -> dict[str, Any]:
    """Expected accuracy of a window: the mean P(correct) over its predictions with a known confidence, and a
    95% interval of the window's realised accuracy from the sum of independent Bernoulli variances,
    sqrt(sum p(1-p)) / n. The interval ignores calibration error (and any concept drift): it is the sampling
    noise only, valid when the calibrated probabilities are exact. No rows: value, low and high are None."""
    p = np.asarray(calibrated, dtype=np.float64).reshape(-1)
    p = np.clip(p[np.isfinite(p)], 0.0, 1.0)
    n = len(p)
    if n == 0:
        return {"value": None, "low": None, "high": None, "rows": 0}
    value = float(p.mean())
    half = Z95 * math.sqrt(float((p * (1.0 - p)).sum())) / n
    return {"value": value, "low": max(0.0, value - half), "high": min(1.0, value + half), "rows": n}


def validate_calibration(doc: Any) -> dict[str, Any]:
    """A calibration document read from metadata, checked strictly (it comes from a store: untrusted); returns
    a clean copy (known keys only, floats). ValueError names the problem."""
    if not isinstance(doc, dict):
        raise ValueError(f"calibration must be an object, got {type(doc).__name__}")
    method = doc.get("method")
    if method not in METHODS:
        raise ValueError(f"calibration.method must be one of {', '.join(METHODS)}, got {method!r}")
    x, y = _points(doc, "x"), _points(doc, "y")
    if len(x) != len(y):
        raise ValueError(f"calibration.x has {len(x)} points, calibration.y {len(y)}")
    if method == "isotonic" and not x:
        raise ValueError("calibration.x: an isotonic calibration needs at least one point")
    if method == "identity" and x:
        raise ValueError("calibration.x: an identity calibration has no points")
    for name, values in (("x", x), ("y", y)):
        if any(b < a for a, b in zip(values, values[1:])):
            raise ValueError(f"calibration.{name} must be non-decreasing")
    rows = doc.get("rows")
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
        raise ValueError(f"calibration.rows must be a non-negative integer, got {rows!r}")
    clean: dict[str, Any] = {"method": method, "x": x, "y": y, "rows": rows}
    for key in ("eceBefore", "eceAfter", "eceIsotonic"):
        value = doc.get(key)
        if value is None and key == "eceIsotonic":
            clean[key] = None
            continue
        if not _is_number(value) or not 0.0 <= value <= 1.0:
            raise ValueError(f"calibration.{key} must be a number in [0, 1], got {value!r}")
        clean[key] = float(value)
    return clean


def _points(doc: dict[str, Any], name: str) -> list[float]:
    values = doc.get(name)
    if not isinstance(values, list):
        raise ValueError(f"calibration.{name} must be a list, got {type(values).__name__}")
    if len(values) > MAX_POINTS:
        raise ValueError(f"calibration.{name} has {len(values)} points, at most {MAX_POINTS} are allowed")
    for i, value in enumerate(values):
        if not _is_number(value) or not 0.0 <= value <= 1.0:
            raise ValueError(f"calibration.{name}[{i}] must be a finite number in [0, 1], got {value!r}")
    return [float(v) for v in values]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _downsample(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """At most MAX_POINTS thresholds, the first and last kept: a subset of a non-decreasing sequence stays
    non-decreasing, and np.interp between the kept points approximates the steps left out."""
    if len(x) <= MAX_POINTS:
        return x, y
    keep = np.unique(np.linspace(0, len(x) - 1, MAX_POINTS).round().astype(int))
    return x[keep], y[keep]


def _clean(doc: dict[str, Any]) -> dict[str, Any]:
    """Plain JSON types: floats rounded to 6 decimals (the map's precision is far coarser than that)."""
    out = dict(doc)
    for key in ("eceBefore", "eceAfter", "eceIsotonic"):
        if out[key] is not None:
            out[key] = round(float(out[key]), 6)
    out["x"] = [round(float(v), 9) for v in out["x"]]
    out["y"] = [round(float(v), 9) for v in out["y"]]
    out["rows"] = int(out["rows"])
    return out
