"""Prediction and label records: what they hold, their store layout and their Parquet encoding.

The model servers write them (model-server/modelloop_server/recording.py); whatever joins outcomes reads
them (outcomes/join.py). Both sides use this module only, so the format has one home (docs/outcomes.md).

Layout under a deployment's `spec.feedback.uri`:

    predictions/<YYYY-MM-DD>/<HH>/<epoch ms>-<writer>-<seq>.parquet     one segment per writer and flush
    labels/<YYYY-MM-DD>/<HH>/<epoch ms>-<writer>-<seq>.parquet          one segment per accepted feedback call

Day and hour are UTC and those of the segment's first record, so a reader of a time window lists only
the days it needs, and retention deletes whole days. `writer` is the pod's name (unique among live pods);
`seq` counts the writer's segments, so two flushes in one millisecond cannot collide.

A prediction's id is `<request id>:<row>`: the request's id (V2 `id`, else the `X-Request-Id` header, else
one the server generates and returns) and the row's 0-based index in the request. The input features are
kept only when the deployment asks (`spec.feedback.logInputs`), as `input.<feature>` columns.
"""
from __future__ import annotations

import io
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

_PROCESS_TOKEN = secrets.token_hex(4)
PREDICTIONS = "predictions"
LABELS = "labels"
KINDS = (PREDICTIONS, LABELS)
INPUT_PREFIX = "input."
# A request id: what the V2 `id` field and X-Request-Id may hold, 1-128 printable ASCII characters without
# spaces (colons included: a row id appends `:<row>`, and the last colon is the one that splits).
REQUEST_ID = re.compile(r"^[!-~]{1,128}$")
ROW_ID = re.compile(r"^([!-~]{1,128}):(0|[1-9][0-9]{0,8})$")
_SEGMENT = re.compile(r"^(predictions|labels)/(\d{4}-\d{2}-\d{2})/(\d{2})/(\d{13})-([a-z0-9.-]{1,253})-(\d{6,})\.parquet$")

PREDICTION_SCHEMA = pa.schema([
    ("id", pa.string()),          # <request id>:<row>
    ("version", pa.int32()),      # the model version that answered
    ("time", pa.int64()),         # epoch milliseconds, when the prediction was made
    ("label", pa.string()),       # classifiers: the predicted class, as text (null for regressors)
    ("value", pa.float64()),      # regressors: the predicted value (null for classifiers)
    ("proba", pa.float64()),      # classifiers: the predicted class's probability (null when unknown)
])
LABEL_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("time", pa.int64()),         # epoch milliseconds, when the label was received
    ("label", pa.string()),       # classifiers: the true class, as text
    ("value", pa.float64()),      # regressors: the true value
])


class RecordError(ValueError):
    """A segment that is not a record segment of this format (or is larger than allowed)."""


@dataclass(frozen=True)
class Segment:
    key: str          # relative to the feedback URI
    kind: str
    day: str
    hour: int
    millis: int
    writer: str


def segment_key(kind: str, millis: int, writer: str, seq: int) -> str:
    at = datetime.fromtimestamp(millis / 1000, tz=timezone.utc)
    return f"{kind}/{at:%Y-%m-%d}/{at:%H}/{millis:013d}-{writer}-{seq:06d}.parquet"


def parse_segment(key: str) -> Segment | None:
    """The segment a key names, or None for anything else (a reader skips foreign objects)."""
    m = _SEGMENT.match(key)
    if not m:
        return None
    return Segment(key, m[1], m[2], int(m[3]), int(m[4]), m[5])


def days(since_millis: int, until_millis: int) -> list[str]:
    """The UTC days (YYYY-MM-DD) a time window touches, oldest first."""
    day = datetime.fromtimestamp(since_millis / 1000, tz=timezone.utc).date()
    last = datetime.fromtimestamp(until_millis / 1000, tz=timezone.utc).date()
    out = []
    while day <= last:
        out.append(day.isoformat())
        day += timedelta(days=1)
    return out


def expired_days(keys_days: set[str], now_millis: int, retention_seconds: float) -> list[str]:
    """Days whose every record is older than the retention: all of the day ended before now - retention."""
    cutoff = datetime.fromtimestamp(now_millis / 1000 - retention_seconds, tz=timezone.utc).date()
    return sorted(d for d in keys_days if d < cutoff.isoformat())


def writer_name(pod: str) -> str:
    """A segment's writer part: the pod name (lower-cased, anything outside [a-z0-9.-] replaced) and a
    random token of this process, so that a restarted container never reuses its predecessor's keys."""
    return f"{re.sub(r'[^a-z0-9.-]', '-', pod.lower())[:240] or 'server'}.{_PROCESS_TOKEN}"


def encode(table: pa.Table, *, compression: str = "zstd") -> bytes:
    """A segment's bytes. A server's quarter-second segments use "snappy" (half zstd's CPU on the serving
    process; about 3x the bytes), and compaction rewrites each closed hour with zstd."""
    sink = io.BytesIO()
    pq.write_table(table, sink, compression=compression, use_dictionary=["version", "label"],
                   write_statistics=["time"])
    return sink.getvalue()


def decode(data: bytes, kind: str, *, max_rows: int, columns: list[str] | None = None) -> pa.Table:
    """A segment's table, checked against its kind's schema; RecordError for anything else. The row count
    is read from the footer and bounded before any column is decoded."""
    schema = PREDICTION_SCHEMA if kind == PREDICTIONS else LABEL_SCHEMA
    try:
        parquet = pq.ParquetFile(io.BytesIO(data))
    except (pa.ArrowException, OSError) as exc:
        raise RecordError(f"not a Parquet file: {type(exc).__name__}") from None
    rows = parquet.metadata.num_rows
    if rows > max_rows:
        raise RecordError(f"{rows} rows; the limit is {max_rows} per segment")
    found = parquet.schema_arrow
    for field in schema:
        if found.get_field_index(field.name) < 0 or not found.field(field.name).type.equals(field.type):
            raise RecordError(f"column {field.name!r} missing or not {field.type}")
    extra = [n for n in found.names if n not in schema.names and not n.startswith(INPUT_PREFIX)]
    if extra:
        raise RecordError(f"unknown columns {extra[:3]}")
    try:
        # columns None: the kind's columns; [] : every column (the input.* ones of logInputs too)
        return parquet.read(columns=None if columns == [] else (columns or schema.names))
    except (pa.ArrowException, OSError) as exc:
        raise RecordError(f"unreadable: {type(exc).__name__}") from None


def empty(kind: str) -> pa.Table:
    """A segment with no rows, of a kind's schema."""
    return (PREDICTION_SCHEMA if kind == PREDICTIONS else LABEL_SCHEMA).empty_table()


def first_row_ids(request_ids: list[str]) -> pa.Array:
    """`<request id>:0` for requests of one row each: the ids' bytes joined once and `:0` appended by numpy when
    they all have one length (the server's own ids), else pyarrow's string join."""
    count = len(request_ids)
    joined = "".join(request_ids).encode("ascii")  # request ids are printable ASCII (REQUEST_ID)
    width = len(request_ids[0]) if count else 0
    if count and width * count == len(joined) and max(map(len, request_ids)) == width:  # so all are that wide
        data = np.empty((count, width + 2), np.uint8)
        data[:, :width] = np.frombuffer(joined, np.uint8).reshape(count, width)
        data[:, width:] = np.frombuffer(b":0", np.uint8)
        offsets = np.arange(0, (count + 1) * (width + 2), width + 2, dtype=np.int32)
        return pa.Array.from_buffers(pa.string(), count, [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    return pc.binary_join_element_wise(pa.array(request_ids, pa.string()), pa.scalar("0"), ":")


def row_ids(request_ids: list[str], counts: list[int]) -> pa.Array:
    """The ids of the rows of several requests, `<request id>:<row>`, in order: one vectorised pass (pyarrow's
    string kernels), not a Python string per row."""
    counts_array = np.asarray(counts, dtype=np.int64)
    total = int(counts_array.sum())
    starts = np.repeat(np.cumsum(counts_array) - counts_array, counts_array)
    rows = pa.array(np.arange(total, dtype=np.int64) - starts).cast(pa.string())
    owners = pa.array(request_ids, pa.string()).take(pa.array(np.repeat(np.arange(len(counts_array)), counts_array)))
    return pc.binary_join_element_wise(owners, rows, ":")
