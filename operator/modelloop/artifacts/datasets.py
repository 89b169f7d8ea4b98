"""Tabular datasets (CSV, Parquet): one place that names the formats, infers one from a URI and parses bytes.
The trainer reads its dataset with it, and a DriftMonitor both the training dataset (in the format its version's
metadata records) and the dataset it compares."""
from __future__ import annotations

import io
from typing import Any

FORMATS = ("csv", "parquet")
FORMATS_BY_EXTENSION = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def infer_format(uri: str) -> str | None:
    """The format a URI's extension names, or None."""
    path = uri.lower()
    return next((fmt for ext, fmt in FORMATS_BY_EXTENSION.items() if path.endswith(ext)), None)


def parse_frame(raw: bytes, fmt: str) -> Any:
    """A pandas DataFrame of `raw` in `fmt` (the parsers' own exceptions propagate)."""
    import pandas as pd

    if fmt not in FORMATS:
        raise ValueError(f"unknown dataset format '{fmt}' (known: {', '.join(FORMATS)})")
    return pd.read_parquet(io.BytesIO(raw)) if fmt == "parquet" else pd.read_csv(io.BytesIO(raw))
