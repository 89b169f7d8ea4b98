"""The join of prediction records with label records, and the live metrics over the joined rows.

Streaming and bounded: the labels (the smaller side) are held as sorted 64-bit id hashes; prediction segments
are read one at a time and only their labelled rows are kept, so memory is the labels plus one segment plus
the matches, whatever the number of predictions. An id labelled twice counts once with its newest label; an
id predicted twice (a client that reused a request id) counts once with its newest prediction.

Live metrics and their 95% intervals (pure functions of the joined rows):
- classifiers: every confusion-matrix metric (accuracy, f1, precision, recall) with a bootstrap interval
  drawn from the multinomial of the confusion matrix (exact for these metrics, and costs no pass over rows);
  binary roc_auc from the predicted class's probability, with the Hanley-McNeil standard error;
- regressors: mae and rmse with normal intervals (the delta method for rmse), r2 by the same bootstrap idea
  over rows when there are few, normal otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

Z95 = 1.959963984540054
BOOTSTRAP_DRAWS = 2000


def hash_ids(ids: Sequence[str] | np.ndarray) -> np.ndarray:
    """64-bit hashes of ids (pandas' vectorised SipHash, fixed key): the same in every process."""
    return pd.util.hash_array(np.asarray(ids, dtype=object), categorize=False)


@dataclass(frozen=True)
class Labels:
    """The newest label of each id, by hash, sorted."""

    hashes: np.ndarray
    label: np.ndarray   # object (text) for classifiers, else empty
    value: np.ndarray   # float64 for regressors, else empty
    time: np.ndarray    # epoch ms the label arrived

    @classmethod
    def from_tables(cls, tables: Iterable[pa.Table]) -> Labels:
        frames = [t.select(["id", "time", "label", "value"]).to_pandas() for t in tables if t.num_rows]
        if not frames:
            empty = np.empty(0)
            return cls(np.empty(0, np.uint64), empty.astype(object), empty, empty.astype(np.int64))
        frame = pd.concat(frames, ignore_index=True)
        frame["hash"] = hash_ids(frame["id"].to_numpy())
        frame = frame.sort_values("time", kind="stable").drop_duplicates("hash", keep="last").sort_values("hash")
        return cls(frame["hash"].to_numpy(np.uint64), frame["label"].to_numpy(object),
                   frame["value"].to_numpy(np.float64), frame["time"].to_numpy(np.int64))

    def __len__(self) -> int:
        return len(self.hashes)


def join(predictions: Iterable[pa.Table], labels: Labels, *, max_delay_ms: int | None = None) -> pd.DataFrame:
    """The labelled predictions: columns version, time, label, value, proba (the prediction) and
    true_label, true_value, label_time. `predictions` is any iterable of prediction segments (read lazily)."""
    parts = []
    for table in predictions:
        if not table.num_rows or not len(labels):
            continue
        hashes = hash_ids(table.column("id").to_numpy(zero_copy_only=False))
        pos = np.searchsorted(labels.hashes, hashes)
        pos[pos == len(labels.hashes)] = 0
        hit = labels.hashes[pos] == hashes
        if not hit.any():
            continue
        rows = table.filter(pa.array(hit)).select(["version", "time", "label", "value", "proba"]).to_pandas()
        at = pos[hit]
        rows["hash"] = hashes[hit]
        rows["true_label"], rows["true_value"], rows["label_time"] = labels.label[at], labels.value[at], labels.time[at]
        parts.append(rows)
    columns = ["version", "time", "label", "value", "proba", "true_label", "true_value", "label_time"]
    if not parts:
        return pd.DataFrame({c: [] for c in columns})
    joined = pd.concat(parts, ignore_index=True)
    if max_delay_ms is not None:
        joined = joined[(joined["label_time"] - joined["time"]) <= max_delay_ms]
    # One row per id and version: a shadowed request has a prediction of each version under one id.
    joined = joined.sort_values("time", kind="stable").drop_duplicates(["hash", "version"], keep="last")
    return joined[columns].reset_index(drop=True)


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


def classification_metrics(predicted: np.ndarray, truth: np.ndarray, classes: Sequence[str], *,
                           proba: np.ndarray | None = None, positive: str | None = None,
                           seed: int = 0) -> dict[str, Estimate]:
    """accuracy, f1, precision, recall (binary: of `positive`, default the last class; multiclass: macro) and,
    for binary models with probabilities, roc_auc."""
    classes = [str(c) for c in classes]
    index = {c: i for i, c in enumerate(classes)}
    k = len(classes)
    p = np.array([index.get(str(v), -1) for v in predicted])
    t = np.array([index.get(str(v), -1) for v in truth])
    known = (p >= 0) & (t >= 0)
    counts = np.bincount(t[known] * k + p[known], minlength=k * k).reshape(k, k).astype(float)
    n = counts.sum()
    if n == 0:
        return {}
    pos = index.get(str(positive), k - 1) if positive is not None else k - 1
    draws = np.random.default_rng(seed).multinomial(int(n), (counts / n).reshape(-1), size=BOOTSTRAP_DRAWS)
    draws = draws.reshape(BOOTSTRAP_DRAWS, k, k).astype(float)
    out = {}
    for name, fn in (("accuracy", _accuracy), ("f1", _f1), ("precision", _precision), ("recall", _recall)):
        value = float(fn(counts[None], k, pos)[0])
        low, high = np.nanpercentile(fn(draws, k, pos), [2.5, 97.5])
        out[name] = Estimate(value, float(low), float(high))
    if k == 2 and proba is not None:
        auc = _binary_auc(p[known], t[known], proba[known], pos)
        if auc is not None:
            out["roc_auc"] = auc
    return out


def _accuracy(c: np.ndarray, k: int, pos: int) -> np.ndarray:
    return np.trace(c, axis1=1, axis2=2) / c.sum(axis=(1, 2))


def _per_class(c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tp = np.diagonal(c, axis1=1, axis2=2)
    return tp, c.sum(axis=1) - tp, c.sum(axis=2) - tp  # tp, fp (column sums minus tp), fn (row sums minus tp)


def _precision(c: np.ndarray, k: int, pos: int) -> np.ndarray:
    tp, fp, _ = _per_class(c)
    with np.errstate(invalid="ignore", divide="ignore"):
        per = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
    return per[:, pos] if k == 2 else per.mean(axis=1)


def _recall(c: np.ndarray, k: int, pos: int) -> np.ndarray:
    tp, _, fn = _per_class(c)
    with np.errstate(invalid="ignore", divide="ignore"):
        per = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
    return per[:, pos] if k == 2 else per.mean(axis=1)


def _f1(c: np.ndarray, k: int, pos: int) -> np.ndarray:
    tp, fp, fn = _per_class(c)
    with np.errstate(invalid="ignore", divide="ignore"):
        per = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
    return per[:, pos] if k == 2 else per.mean(axis=1)


def _binary_auc(p: np.ndarray, t: np.ndarray, proba: np.ndarray, pos: int) -> Estimate | None:
    ok = np.isfinite(proba)
    score = np.where(p == pos, proba, 1.0 - proba)[ok]  # P(positive) from the predicted class's probability
    y = (t == pos)[ok]
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return None
    ranks = pd.Series(score).rank().to_numpy()
    auc = float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    se = float(np.sqrt((auc * (1 - auc) + (n1 - 1) * (q1 - auc * auc) + (n0 - 1) * (q2 - auc * auc)) / (n1 * n0)))
    return Estimate(auc, max(0.0, auc - Z95 * se), min(1.0, auc + Z95 * se))


def regression_metrics(predicted: np.ndarray, truth: np.ndarray) -> dict[str, Estimate]:
    ok = np.isfinite(predicted) & np.isfinite(truth)
    error = (predicted - truth)[ok]
    n = len(error)
    if n == 0:
        return {}
    absolute, squared = np.abs(error), error * error
    mae, mse = float(absolute.mean()), float(squared.mean())
    se_mae = float(absolute.std(ddof=1) / np.sqrt(n)) if n > 1 else float("inf")
    se_mse = float(squared.std(ddof=1) / np.sqrt(n)) if n > 1 else float("inf")
    rmse = float(np.sqrt(mse))
    se_rmse = se_mse / (2 * rmse) if rmse > 0 else 0.0  # delta method
    out = {"mae": Estimate(mae, max(0.0, mae - Z95 * se_mae), mae + Z95 * se_mae),
           "rmse": Estimate(rmse, max(0.0, rmse - Z95 * se_rmse), rmse + Z95 * se_rmse)}
    variance = float(truth[ok].var())
    if n > 1 and variance > 0:
        r2 = 1 - mse / variance
        se_r2 = se_mse / variance
        out["r2"] = Estimate(r2, r2 - Z95 * se_r2, min(1.0, r2 + Z95 * se_r2))
    return out


def live_performance(joined: pd.DataFrame, *, classifier: bool, classes: Sequence[str] | None = None,
                     positive: str | None = None) -> dict[int, dict]:
    """Per served version: the labelled count and every live metric with its interval."""
    out: dict[int, dict] = {}
    for version, rows in joined.groupby("version"):
        if classifier:
            metrics = classification_metrics(rows["label"].to_numpy(), rows["true_label"].to_numpy(), classes or [],
                                             proba=rows["proba"].to_numpy(np.float64), positive=positive)
        else:
            metrics = regression_metrics(rows["value"].to_numpy(np.float64), rows["true_value"].to_numpy(np.float64))
        out[int(version)] = {"labelled": int(len(rows)), "metrics": {k: v.as_dict() for k, v in metrics.items()}}
    return out


def window_segments(segment_keys: Iterable[str], read: Callable[[str], pa.Table], *, since_ms: int
                    ) -> tuple[Labels, list[str]]:
    """The labels that arrived since `since_ms` (read whole) and the keys of the prediction segments that may hold
    predictions made since then (to be read one at a time), from the keys of the record segments of the days the
    window touches (both kinds; others are skipped)."""
    from .records import LABELS, PREDICTIONS, parse_segment

    segments = [s for s in map(parse_segment, segment_keys) if s is not None]
    labels = Labels.from_tables(read(s.key) for s in segments if s.kind == LABELS and s.millis >= since_ms)
    # A prediction segment is named after its first record; its last is at most a flush (seconds) later.
    wanted = [s.key for s in segments if s.kind == PREDICTIONS and s.millis >= since_ms - 60_000]
    return labels, wanted


def window_performance(segment_keys: Iterable[str], read: Callable[[str], pa.Table], *, since_ms: int,
                       max_delay_ms: int, classifier: bool, classes: Sequence[str] | None = None,
                       positive: str | None = None, calibration: dict | None = None,
                       version: int | None = None) -> dict[int, dict]:
    """Live performance of the predictions made since `since_ms`: `segment_keys` are the keys of the record
    segments of the days the window touches (both kinds; others are skipped), `read(key)` a segment's table.
    Labels are held whole; prediction segments are read one at a time (see `join`). With the `calibration`
    of `version` (its metadata.json), that version also gets `estimated`: its accuracy estimated without
    labels from every prediction's calibrated confidence (modelloop.outcomes.cbpe), labelled or not."""
    from .cbpe import calibrate, estimate_accuracy

    labels, wanted = window_segments(segment_keys, read, since_ms=since_ms)
    confidences: list[np.ndarray] = []

    def tables() -> Iterable[pa.Table]:
        for key in wanted:
            table = read(key)
            if calibration is not None:
                mine = (table.column("version").to_numpy() == version) & (table.column("time").to_numpy() >= since_ms)
                proba = table.column("proba").to_numpy(zero_copy_only=False)[mine]
                confidences.append(calibrate(calibration, proba.astype(np.float64)))
            yield table
    joined = join(tables(), labels, max_delay_ms=max_delay_ms)
    joined = joined[joined["time"] >= since_ms]
    out = live_performance(joined, classifier=classifier, classes=classes, positive=positive)
    if calibration is not None and confidences:
        estimate = estimate_accuracy(np.concatenate(confidences))
        if estimate["rows"]:
            entry = out.setdefault(int(version), {"labelled": 0, "metrics": {}})
            entry["estimated"] = {"rows": estimate["rows"], "metrics": {"accuracy": {
                k: estimate[k] for k in ("value", "low", "high")}}}
    return out
