"""Two versions on the same prediction ids (a shadowed request is predicted by both and recorded under one id):
what the champion/challenger analysis needs (modelloop.analysis.Paired), from the record segments.

Streaming like the join: prediction segments are read one at a time and only the two versions' rows are kept
(an id hash and a label or value each: 16 bytes a row), then matched by id hash."""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy import stats

from .join import Labels, hash_ids


def _version_rows(predictions: Iterable[pa.Table], versions: tuple[int, int], classifier: bool
                  ) -> dict[int, pd.Series]:
    """Per version: the newest prediction of each id hash (label text, or value)."""
    parts: dict[int, list[pd.DataFrame]] = {v: [] for v in versions}
    for table in predictions:
        if not table.num_rows:
            continue
        version = table.column("version").to_numpy()
        for v in versions:
            mine = version == v
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
        out[v] = pd.Series(frame["out"].to_numpy(), index=frame["hash"].to_numpy(np.uint64))
    return out


def paired_versions(predictions: Iterable[pa.Table], labels: Labels, *, champion: int, challenger: int,
                    classifier: bool) -> dict[str, Any]:
    """The fields of modelloop.analysis.Paired for the ids both versions predicted."""
    found = _version_rows(predictions, (champion, challenger), classifier)
    both = found[champion].index.intersection(found[challenger].index)
    a, b = found[champion].loc[both].to_numpy(), found[challenger].loc[both].to_numpy()
    result: dict[str, Any] = {"rows": int(len(both))}
    pos = np.searchsorted(labels.hashes, both.to_numpy(np.uint64)) if len(labels) else np.zeros(len(both), int)
    pos[pos == len(labels.hashes)] = 0
    labelled = (labels.hashes[pos] == both.to_numpy(np.uint64)) if len(labels) else np.zeros(len(both), bool)
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
