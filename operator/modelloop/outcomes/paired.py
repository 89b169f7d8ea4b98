"""Two versions on the same prediction ids (a shadowed request is predicted by both and recorded under one id):
what the champion/challenger analysis needs (modelloop.analysis.Paired), from the record segments.

Streaming like the join: prediction segments are read one at a time and only the two versions' rows are kept
(an id hash, a time and the output each: 24 bytes a row for regressors; a classifier's label is a Python string
of its own, about 60 bytes more), then matched by id hash."""
from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy import stats

from .join import Labels, hash_ids, window_segments


def _version_rows(predictions: Iterable[pa.Table], versions: tuple[int, int], classifier: bool,
                  since_ms: int | None) -> dict[int, pd.DataFrame]:
    """Per version, indexed by id hash: the newest prediction of each id made since `since_ms` (its time, and its
    label text or value as `out`)."""
    parts: dict[int, list[pd.DataFrame]] = {v: [] for v in versions}
    for table in predictions:
        if not table.num_rows:
            continue
        version = table.column("version").to_numpy()
        recent = table.column("time").to_numpy() >= since_ms if since_ms is not None else True
        for v in versions:
            mine = (version == v) & recent
            if mine.any():
                rows = table.filter(pa.array(mine))
                parts[v].append(pd.DataFrame({
                    "hash": hash_ids(rows.column("id").to_numpy(zero_copy_only=False)),
                    "time": rows.column("time").to_numpy(),
                    "out": rows.column("label" if classifier else "value").to_numpy(zero_copy_only=False)}))
    out = {}
    for v, frames in parts.items():
        frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({"hash": [], "time": [], "out": []})
        frame = frame.sort_values("time", kind="stable").drop_duplicates("hash", keep="last")
        out[v] = frame.set_index(pd.Index(frame["hash"].to_numpy(np.uint64)))[["time", "out"]]
    return out


def paired_versions(predictions: Iterable[pa.Table], labels: Labels, *, champion: int, challenger: int,
                    classifier: bool, since_ms: int | None = None, max_delay_ms: int | None = None) -> dict[str, Any]:
    """The fields of modelloop.analysis.Paired for the ids both versions predicted (since `since_ms`, when given).
    With `max_delay_ms`, a label counts only when it arrived within that delay of both predictions, as in the live
    join."""
    found = _version_rows(predictions, (champion, challenger), classifier, since_ms)
    both = found[champion].index.intersection(found[challenger].index)
    first, second = found[champion].loc[both], found[challenger].loc[both]
    a, b = first["out"].to_numpy(), second["out"].to_numpy()
    result: dict[str, Any] = {"rows": int(len(both))}
    pos = np.searchsorted(labels.hashes, both.to_numpy(np.uint64)) if len(labels) else np.zeros(len(both), int)
    pos[pos == len(labels.hashes)] = 0
    labelled = (labels.hashes[pos] == both.to_numpy(np.uint64)) if len(labels) else np.zeros(len(both), bool)
    if max_delay_ms is not None and len(labels):
        predicted = np.minimum(first["time"].to_numpy(np.int64), second["time"].to_numpy(np.int64))
        labelled &= labels.time[pos] - predicted <= max_delay_ms
    if classifier:
        result["agreed"] = int((a == b).sum())
        truth = labels.label[pos[labelled]]
        right_a, right_b = a[labelled] == truth, b[labelled] == truth
        result["champion_only_right"] = int((right_a & ~right_b).sum())
        result["challenger_only_right"] = int((right_b & ~right_a).sum())
        return result
    a, b = a.astype(np.float64), b.astype(np.float64)
    spread = float(np.std(a)) if len(a) > 1 else 0.0
    result["output_distance"] = (float(stats.wasserstein_distance(a, b)) / spread if spread > 0
                                 else (0.0 if np.array_equal(a, b) else float("inf"))) if len(a) else None
    truth = labels.value[pos[labelled]]
    diff = np.abs(b[labelled] - truth) - np.abs(a[labelled] - truth)
    if len(diff):
        result["loss_differences"] = (int(len(diff)), float(diff.mean()),
                                      float(diff.std(ddof=1)) if len(diff) > 1 else 0.0)
    return result


def window_paired(segment_keys: Iterable[str], read: Callable[[str], pa.Table], *, since_ms: int, max_delay_ms: int,
                  champion: int, challenger: int, classifier: bool) -> dict[str, Any]:
    """`paired_versions` over the predictions made since `since_ms`, from the record segments of the days the
    window touches, read as the live performance reads them (modelloop.outcomes.join.window_segments): the labels
    whole, the prediction segments one at a time."""
    labels, wanted = window_segments(segment_keys, read, since_ms=since_ms)
    return paired_versions((read(key) for key in wanted), labels, champion=champion, challenger=challenger,
                           classifier=classifier, since_ms=since_ms, max_delay_ms=max_delay_ms)
