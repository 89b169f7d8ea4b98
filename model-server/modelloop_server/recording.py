"""Outcomes on the server: prediction records written to the deployment's store, the index of recorded
prediction ids that feedback is checked against, and label records (the format: modelloop.outcomes.records).

- `PredictionRecorder.record` runs on the predict thread, once per batch: it appends references to the
  batch's predictions to a list (no per-row Python work). A flusher thread writes what was recorded as one Parquet
  segment every `flush_seconds` (default 0.25 s: shorter holds of the GIL than once a second, which put p99
  at 64 connections at 2.7x; bench/feedback) and at shutdown, so a killed pod loses at most the last
  quarter second. While the store is unreachable segments stay buffered, up to `max_buffered_rows`; beyond that the
  oldest are dropped and counted (modelloop_server_records_dropped_total), never blocking a prediction.
- `PredictionIndex` answers "was this id predicted by this deployment within maxDelay?" for any replica:
  it holds 64-bit hashes of the ids of every segment under predictions/ of the days within maxDelay
  (8 bytes a prediction; at most `max_ids`), refreshed from the store when a feedback call names an id it
  does not know (at most once a second). The local recorder's unflushed rows are looked up too.
- `LabelWriter.write` stores one accepted feedback call as one label segment, synchronously: a 200 means
  the labels are in the store.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from itertools import chain
from operator import attrgetter
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from modelloop.artifacts.backends import Backend, backend_for, read_capped
from modelloop.artifacts.errors import ObjectNotFoundError, StorageError
from modelloop.artifacts.uri import StorageUri, parse_uri
from modelloop.outcomes import records
from modelloop.outcomes.join import hash_ids, window_performance
from modelloop.outcomes.paired import window_paired

from .logs import log_event

log = logging.getLogger("modelloop.server")
# A segment holds at most this many rows (a flush writes several segments beyond it); readers refuse more.
MAX_SEGMENT_ROWS = 1_000_000
MAX_SEGMENT_BYTES = 256 * 1024 * 1024


class _Buffer:
    """Recorded batches, one tuple each: appending it is all the predict thread does. The flusher takes the whole
    buffer and builds each column once (no per-batch Python work on the predict thread beyond the append)."""

    __slots__ = ("batches", "rows")

    def __init__(self) -> None:
        # per batch: (epoch ms it was predicted, its request ids, each request's rows, predictions, probabilities
        # or None, input rows or None)
        self.batches: list[tuple[int, Sequence[str], Sequence[int], np.ndarray, np.ndarray | None, Any]] = []
        self.rows = 0

    def extend(self, later: _Buffer) -> None:
        """Append `later`'s batches after this buffer's."""
        self.batches += later.batches
        self.rows += later.rows

    def drop_oldest(self, keep_rows: int) -> int:
        """Drop the oldest batches until at most `keep_rows` rows are left (the newest batch is always kept);
        the rows dropped."""
        batches, dropped = 0, 0
        while self.rows - dropped > keep_rows and batches < len(self.batches) - 1:
            dropped += len(self.batches[batches][3])
            batches += 1
        del self.batches[:batches]
        self.rows -= dropped
        return dropped

    def columns(self) -> tuple[tuple[Any, ...], ...]:
        """The batches' fields, one tuple each (millis, request ids, counts, predictions, probabilities, inputs):
        one transposition in C, not a Python loop per field."""
        return tuple(zip(*self.batches)) if self.batches else ((),) * 6

    @staticmethod
    def ids(request_ids: Sequence[Sequence[str]], counts: Sequence[Sequence[int]], rows: int) -> pa.Array:
        """The row ids, `<request id>:<row>` (records.row_ids), in order."""
        flat = list(chain.from_iterable(request_ids))
        if len(flat) == rows:  # one row a request: `<request id>:0`
            return records.first_row_ids(flat)
        return records.row_ids(flat, list(chain.from_iterable(counts)))


class PredictionRecorder:
    def __init__(self, backend: Backend, base: StorageUri, *, writer: str, version: int, classifier: bool,
                 input_names: Sequence[str] | None = None, flush_seconds: float = 0.25,
                 max_buffered_rows: int = 1_000_000, on_dropped: Callable[[int], None] = lambda n: None,
                 on_written: Callable[[int], None] = lambda n: None,
                 on_flushed: Callable[[str, int, np.ndarray], None] = lambda key, millis, hashes: None) -> None:
        self.backend, self.base = backend, base
        self.writer = records.writer_name(writer)  # with a token of this process: see writer_name
        self.version = version
        self.classifier = classifier
        self.input_names = list(input_names) if input_names else None
        self.flush_seconds = flush_seconds
        self.max_buffered_rows = max_buffered_rows
        self.on_dropped, self.on_written, self.on_flushed = on_dropped, on_written, on_flushed
        self._lock = threading.Lock()
        self._pending = _Buffer()
        self._writing: _Buffer | None = None  # taken by the flusher, not yet in the store (feedback looks it up)
        self._seq = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the predict thread ---------------------------------------------------------------------------

    def record(self, request_ids: Sequence[str], counts: Sequence[int], predictions: np.ndarray,
               probabilities: np.ndarray | None, rows: Any = None) -> None:
        millis = time.time_ns() // 1_000_000
        with self._lock:
            self._pending.batches.append((millis, request_ids, counts, predictions, probabilities,
                                          rows if self.input_names else None))
            self._pending.rows += len(predictions)
            dropped = (self._pending.drop_oldest(self.max_buffered_rows)
                       if self._pending.rows > self.max_buffered_rows else 0)
        if dropped:
            self.on_dropped(dropped)

    # -- lookups (feedback) ---------------------------------------------------------------------------

    def unflushed_hashes(self) -> np.ndarray:
        """Hashes of the ids recorded and not yet in the store (the last quarter second or so)."""
        with self._lock:
            buffers = [b for b in (self._writing, self._pending) if b is not None and b.rows]
            ids = [b.ids(*b.columns()[1:3], b.rows) for b in buffers]
        if not ids:
            return np.empty(0, np.uint64)
        return np.concatenate([hash_ids(i.to_numpy(zero_copy_only=False)) for i in ids])

    # -- the flusher thread ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="record-flusher", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the flusher and write what is left (a pod's shutdown)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            self.flush()

    def flush(self) -> int:
        """Write the recorded rows as a segment; the rows written (0 when none, or when the store failed:
        they go back to the buffer for the next flush)."""
        with self._lock:
            taken, self._pending = self._pending, _Buffer()
            self._writing = taken
        if not taken.rows:
            self._writing = None
            return 0
        table = self._table(taken)
        first_millis = taken.batches[0][0]
        key = records.segment_key(records.PREDICTIONS, first_millis, self.writer, self._seq)
        try:
            self.backend.write(self.base.child(*key.split("/")), records.encode(table, compression="snappy"))
        except StorageError as exc:
            log.warning("records.flush-failed", extra={"fields": {"rows": table.num_rows, "error": str(exc)}})
            with self._lock:  # back in front of what was recorded meanwhile, within the bound
                taken.extend(self._pending)
                self._pending, self._writing = taken, None
                dropped = taken.drop_oldest(self.max_buffered_rows) if taken.rows > self.max_buffered_rows else 0
            if dropped:
                self.on_dropped(dropped)
            return 0
        self._seq += 1
        self.on_flushed(key, first_millis, hash_ids(table.column("id").to_numpy(zero_copy_only=False)))
        with self._lock:
            self._writing = None
        self.on_written(table.num_rows)
        return table.num_rows

    def _table(self, taken: _Buffer) -> pa.Table:
        """One concatenation a column (at 1-row batches there is one batch per request)."""
        millis, request_ids, counts, predictions, probabilities, inputs = taken.columns()
        sizes = np.fromiter(map(len, predictions), np.int64, len(predictions))
        ids = taken.ids(request_ids, counts, taken.rows)
        n = len(ids)
        if self.classifier:
            label = _labels(_concatenate(predictions, n, flat=True))
            value = pa.nulls(n, pa.float64())
            proba = pa.array(_confidence(probabilities, sizes), pa.float64(), from_pandas=True)
        else:
            label = pa.nulls(n, pa.string())
            value = pa.array(_concatenate(predictions, n, flat=True).astype(np.float64), pa.float64())
            proba = pa.nulls(n, pa.float64())
        columns = {"id": ids, "version": pa.array(np.full(n, self.version, np.int32)),
                   "time": pa.array(np.repeat(np.asarray(millis, np.int64), sizes)), "label": label,
                   "value": value, "proba": proba}
        if self.input_names:
            inputs = [_input_columns(r, self.input_names) for r in inputs]
            for name in self.input_names:
                columns[records.INPUT_PREFIX + name] = pa.array(np.concatenate([i[name] for i in inputs]),
                                                                from_pandas=True)
        return pa.table(columns)


def _concatenate(arrays: Sequence[np.ndarray], rows: int, *, flat: bool = False) -> np.ndarray:
    """np.concatenate(arrays) of `rows` rows in all (flattened with `flat`), a quarter of its cost for C-contiguous
    numeric arrays of one dtype and row width: their bytes joined. At one-row batches numpy's per-array dtype
    discovery and casting were a third of a flush."""
    try:
        dtypes = set(map(attrgetter("dtype"), arrays))
        if len(dtypes) == 1 and (dtype := dtypes.pop()).kind in "biuf":
            tail = arrays[0].shape[1:]
            joined = b"".join(arrays)  # the buffer protocol: C-contiguous arrays only (else BufferError)
            if len(joined) == rows * dtype.itemsize * int(np.prod(tail, dtype=np.int64)):  # all of one row width
                joined_rows = np.frombuffer(joined, dtype).reshape(rows, *tail)
                return joined_rows.ravel() if flat else joined_rows
    except (AttributeError, BufferError, TypeError):  # None among them, a view, a 0-d array: numpy's own way
        pass
    return np.concatenate(arrays, axis=None if flat else 0)


def _labels(predictions: np.ndarray) -> pa.Array:
    """Predicted labels as text: strings as they are, numbers (ONNX int64 labels) cast."""
    try:
        return pa.array(predictions).cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):  # mixed objects
        return pa.array(predictions.astype(str), pa.string())


def _confidence(probabilities: Sequence[np.ndarray | None], sizes: np.ndarray) -> np.ndarray:
    """Each row's highest class probability; NaN for the batches without probabilities (a runtime that
    computes them only on request)."""
    try:
        return _concatenate(probabilities, int(sizes.sum())).max(axis=1)  # all have them, of one width: one pass
    except (ValueError, TypeError, np.exceptions.AxisError):
        return np.concatenate([p.max(axis=1) if p is not None and p.ndim == 2 else np.full(size, np.nan)
                               for p, size in zip(probabilities, sizes)])


def _input_columns(rows: Any, names: Sequence[str]) -> dict[str, np.ndarray]:
    if isinstance(rows, np.ndarray):
        return {name: rows[:, i].copy() for i, name in enumerate(names)}
    return {name: np.asarray(rows[name]) for name in names}


class PredictionIndex:
    """Hashes of the prediction ids recorded under predictions/ within `max_delay_seconds`.

    Two tiers, like a log-structured merge: one large sorted array (with each entry's segment time, so that
    expired entries are dropped when it is rebuilt) and the recent segments' sorted arrays. A refresh adds the
    new segments to the recent tier; once that tier holds more than `max_recent` segments or a quarter of the
    large array's entries, it is merged into the large one. A lookup is then one binary search in the large
    array and at most `max_recent` small ones, whatever the number of segments in maxDelay."""

    def __init__(self, backend: Backend, base: StorageUri, *, max_delay_seconds: float, max_ids: int = 20_000_000,
                 refresh_seconds: float = 1.0, max_recent: int = 64) -> None:
        self.backend, self.base = backend, base
        self.max_delay_seconds = max_delay_seconds
        self.max_ids = max_ids
        self.refresh_seconds = refresh_seconds
        self.max_recent = max_recent
        self._large = np.empty(0, np.uint64)
        self._large_time = np.empty(0, np.int64)
        self._recent: dict[str, tuple[int, np.ndarray]] = {}  # key -> (segment time, sorted hashes)
        self._known: dict[str, int] = {}  # every indexed segment key -> its time (to skip it on the next listing)
        self._complete = True  # False once a segment within maxDelay was left out for the bound
        self._refreshed = self._fully_refreshed = -float("inf")
        self._lock = threading.Lock()

    @property
    def complete(self) -> bool:
        """Whether every prediction within maxDelay is indexed (an id not found is then truly unknown)."""
        return self._complete

    def __len__(self) -> int:
        return len(self._large) + sum(len(h) for _, h in self._recent.values())

    def missing(self, hashes: np.ndarray, extra: np.ndarray | None = None) -> np.ndarray:
        """A boolean mask: which of `hashes` are in no indexed segment (nor in `extra`). Refreshes from the
        store first when some are missing and the last refresh is older than refresh_seconds."""
        mask = self._missing(hashes, extra)
        if mask.any() and time.monotonic() - self._refreshed >= self.refresh_seconds:
            # New segments land in the current day, so a refresh lists that (and the hour before); the whole
            # of maxDelay is listed again at most once a minute, for segments a pod flushed late (its store
            # was down) under the day of their first record.
            full = time.monotonic() - self._fully_refreshed >= 60.0
            self.refresh(recent_only=not full)
            mask[mask] = self._missing(hashes[mask], extra)
        return mask

    def _missing(self, hashes: np.ndarray, extra: np.ndarray | None) -> np.ndarray:
        mask = np.ones(len(hashes), bool)
        with self._lock:
            arrays = [self._large, *(h for _, h in self._recent.values())]
        if extra is not None and len(extra):
            arrays.append(np.sort(extra))
        for known in arrays:
            if not mask.any():
                break
            if not len(known):
                continue
            wanted = hashes[mask]
            pos = np.searchsorted(known, wanted)
            pos[pos == len(known)] = 0
            mask[mask] = known[pos] != wanted
        return mask

    def refresh(self, recent_only: bool = False) -> None:
        """Load the ids of the segments written since the last refresh (newest first, within the bound); with
        `recent_only`, list only the days of the last hour."""
        now = int(time.time() * 1000)
        since = now - int(self.max_delay_seconds * 1000) - 60_000  # a segment's last record: a flush after its name
        found: list[records.Segment] = []
        for day in records.days(max(since, now - 3_600_000) if recent_only else since, now):
            for key in self.backend.list_keys(self.base.child(records.PREDICTIONS, day)):
                segment = records.parse_segment(f"{records.PREDICTIONS}/{day}/{key}")
                if segment is not None and segment.millis >= since and segment.key not in self._known:
                    found.append(segment)
        for segment in sorted(found, key=lambda s: -s.millis):
            if len(self) >= self.max_ids:
                self._complete = False
                break
            data = read_capped(self.backend, self.base.child(*segment.key.split("/")), MAX_SEGMENT_BYTES,
                               "prediction segment")
            try:
                table = records.decode(data, records.PREDICTIONS, max_rows=MAX_SEGMENT_ROWS, columns=["id"])
            except records.RecordError as exc:
                log.warning("records.segment-refused", extra={"fields": {"key": segment.key, "error": str(exc)}})
                continue
            hashes = np.sort(hash_ids(table.column("id").to_numpy(zero_copy_only=False)))
            with self._lock:
                self._recent[segment.key] = (segment.millis, hashes)
                self._known[segment.key] = segment.millis
        self._maybe_merge(since)
        self._refreshed = time.monotonic()
        if not recent_only:
            self._fully_refreshed = self._refreshed

    def add(self, key: str, millis: int, hashes: np.ndarray) -> None:
        """A segment this process has just written: known at once (a label for it must not wait for a
        refresh), and never read back."""
        with self._lock:
            self._recent[key] = (millis, np.sort(hashes))
            self._known[key] = millis
        self._maybe_merge(int(time.time() * 1000) - int(self.max_delay_seconds * 1000) - 60_000)

    def _maybe_merge(self, since: int) -> None:
        """Two levels, so that no refresh sorts the large array often: many small recent arrays collapse into
        one; the recent tier joins the large array once it holds a quarter of it (or a million ids)."""
        with self._lock:
            recent = sum(len(h) for _, h in self._recent.values())
            count = len(self._recent)
        if recent > len(self._large) // 4 + 1_000_000:
            self._merge(since)
        elif count > self.max_recent:
            with self._lock:
                parts = list(self._recent.values())
                self._recent = {f"merged-{time.monotonic_ns()}": (
                    max(t for t, _ in parts), np.sort(np.concatenate([h for _, h in parts])))}

    def _merge(self, since: int) -> None:
        """The recent tier into the large array; entries older than maxDelay leave it."""
        with self._lock:
            recent = list(self._recent.values())
        keep = self._large_time >= since
        merged = np.concatenate([self._large[keep], *(h for _, h in recent)])
        times = np.concatenate([self._large_time[keep], *(np.full(len(h), t, np.int64) for t, h in recent)])
        order = np.argsort(merged, kind="stable")
        merged, times = merged[order], times[order]
        first = np.ones(len(merged), bool)  # an id twice (a compacted hour read again): once
        first[1:] = merged[1:] != merged[:-1]
        with self._lock:
            self._large, self._large_time = merged[first], times[first]
            self._recent = {}
            self._known = {k: t for k, t in self._known.items() if t >= since}


class LabelWriter:
    def __init__(self, backend: Backend, base: StorageUri, *, writer: str) -> None:
        self.backend, self.base = backend, base
        self.writer = records.writer_name(writer)
        self._seq = 0
        self._lock = threading.Lock()

    def write(self, ids: list[str], labels: list[str] | None, values: list[float] | None) -> str:
        """Store one feedback call's labels as a segment; its key. StorageError when the store fails."""
        millis = int(time.time() * 1000)
        n = len(ids)
        table = pa.table({
            "id": pa.array(ids, pa.string()), "time": pa.array(np.full(n, millis, np.int64)),
            "label": pa.array(labels, pa.string()) if labels is not None else pa.nulls(n, pa.string()),
            "value": pa.array(values, pa.float64()) if values is not None else pa.nulls(n, pa.float64())})
        with self._lock:
            seq, self._seq = self._seq, self._seq + 1
        key = records.segment_key(records.LABELS, millis, self.writer, seq)
        self.backend.write(self.base.child(*key.split("/")), records.encode(table))
        return key


@dataclass
class Outcomes:
    """What a server with feedback on holds: its recorder, the id index, the label writer, and one thread for
    feedback calls, joins and retention (store calls and decoding, off the event loop and the predict thread)."""

    recorder: PredictionRecorder
    index: PredictionIndex
    labels: LabelWriter
    executor: ThreadPoolExecutor
    retention_seconds: float
    _expired_at: float = -float("inf")

    def close(self) -> None:
        self.recorder.close()
        self.executor.shutdown(wait=True)

    def performance(self, model: Any, since_ms: int) -> dict[int, dict]:
        """Live performance per version of the predictions made since `since_ms` (any replica's: all is read
        from the store), as modelloop.outcomes.join.window_performance computes it."""
        since_ms, keys, read = self._window(since_ms)
        return window_performance(keys, read, since_ms=since_ms,
                                  max_delay_ms=int(self.index.max_delay_seconds * 1000), classifier=model.classifier,
                                  classes=[str(c) for c in model.classes or []],
                                  calibration=model.metadata.get("calibration"), version=model.version)

    def paired(self, model: Any, since_ms: int, champion: int, challenger: int) -> tuple[int, dict[str, Any]]:
        """Two versions on the same prediction ids since `since_ms` (any replica's records), as
        modelloop.outcomes.paired.window_paired computes them; with the window's start (no earlier than the
        retention)."""
        since_ms, keys, read = self._window(since_ms)
        return since_ms, window_paired(keys, read, since_ms=since_ms,
                                       max_delay_ms=int(self.index.max_delay_seconds * 1000), champion=champion,
                                       challenger=challenger, classifier=model.classifier)

    def _window(self, since_ms: int) -> tuple[int, list[str], Callable[[str], pa.Table]]:
        """The start of a window from `since_ms` (no earlier than the retention: nothing older is kept), the keys
        of the record segments of the days it touches, and a reader of one segment (capped; a segment compacted
        meanwhile reads as empty, its rows being in the compacted one)."""
        backend, base = self.recorder.backend, self.recorder.base
        now = int(time.time() * 1000)
        since_ms = max(since_ms, now - int(self.retention_seconds * 1000))
        keys = [f"{kind}/{day}/{key}" for kind in records.KINDS for day in records.days(since_ms, now)
                for key in backend.list_keys(base.child(kind, day))]

        def read(key: str) -> pa.Table:
            kind = key.split("/", 1)[0]
            try:
                data = read_capped(backend, base.child(*key.split("/")), MAX_SEGMENT_BYTES, "record segment")
            except ObjectNotFoundError:
                return records.empty(kind)
            return records.decode(data, kind, max_rows=MAX_SEGMENT_ROWS)
        return since_ms, keys, read

    def compact(self, *, min_age_seconds: float = 7200.0, look_back_days: int = 2) -> list[str]:
        """Merge the segments of each closed hour (ended more than `min_age_seconds` ago, within the last
        `look_back_days` days) into one segment per kind and hour (more when it would exceed MAX_SEGMENT_ROWS):
        a busy deployment writes a segment per replica per second, which every read of a window must list and
        fetch. The merged segment is written before its inputs are deleted, so no record is ever only in
        memory. Replicas may compact the same hour at once: both write the same rows, and every reader counts
        an id once (the join and the index deduplicate by id), so the only cost is the work done twice."""
        backend, base = self.recorder.backend, self.recorder.base
        now = int(time.time() * 1000)
        closed_before = now - int(min_age_seconds * 1000)
        merged = []
        for kind in records.KINDS:
            for day in records.days(now - look_back_days * 86_400_000, now):
                hours: dict[int, list[records.Segment]] = {}
                for key in backend.list_keys(base.child(kind, day)):
                    segment = records.parse_segment(f"{kind}/{day}/{key}")
                    if segment is not None:
                        hours.setdefault(segment.hour, []).append(segment)
                for hour, segments in sorted(hours.items()):
                    hour_end = int(datetime.fromisoformat(f"{day}T{hour:02d}:00:00+00:00").timestamp() * 1000) + 3_600_000
                    if len(segments) > 1 and hour_end <= closed_before:
                        merged.append(self._compact_hour(kind, sorted(segments, key=lambda s: s.millis)))
        return merged

    def _compact_hour(self, kind: str, segments: list[records.Segment], batch_rows: int = 250_000) -> str:
        """Stream an hour's segments into merged ones of at most `batch_rows` rows (so memory holds one merged
        segment, not the hour), then delete the inputs."""
        backend, base = self.recorder.backend, self.recorder.base
        written, merged_inputs, batch, rows = [], [], [], 0

        def flush() -> None:
            if batch:
                merged = pa.concat_tables(batch, promote_options="default")
                first = int(pc.min(merged.column("time")).as_py())
                key = records.segment_key(kind, first, records.writer_name("compact"), len(written))
                backend.write(base.child(*key.split("/")), records.encode(merged))
                written.append(key)
                batch.clear()
        for segment in segments:
            try:
                data = read_capped(backend, base.child(*segment.key.split("/")), MAX_SEGMENT_BYTES, "record segment")
                table = records.decode(data, kind, max_rows=MAX_SEGMENT_ROWS, columns=[])
            except ObjectNotFoundError:  # another replica compacted it first
                continue
            except records.RecordError as exc:  # not ours to merge or delete
                log.warning("records.segment-refused", extra={"fields": {"key": segment.key, "error": str(exc)}})
                continue
            if batch and sum(t.num_rows for t in batch) + table.num_rows > batch_rows:
                flush()
            batch.append(table)
            merged_inputs.append(segment)
            rows += table.num_rows
        flush()
        for segment in merged_inputs:  # only once every row is in a merged segment
            backend.delete(base.child(*segment.key.split("/")))
        log_event("records.compacted", kind=kind, segments=len(merged_inputs), rows=rows, into=len(written))
        return f"{segments[0].key.rsplit('/', 1)[0]}: {len(merged_inputs)} segments, {rows} rows into {len(written)}"

    def expire(self, every_seconds: float = 3600.0) -> list[str]:
        """Delete the days of records older than the retention (at most once per `every_seconds`; any replica
        may, deletion is idempotent). The 31 days before the cutoff are probed, so a deployment whose pods were
        all down for weeks still catches up."""
        if time.monotonic() - self._expired_at < every_seconds:
            return []
        self._expired_at = time.monotonic()
        backend, base = self.recorder.backend, self.recorder.base
        now = int(time.time() * 1000)
        cutoff = now - int(self.retention_seconds * 1000)
        deleted = []
        for day in records.days(cutoff - 31 * 86_400_000, cutoff)[:-1]:  # the cutoff's own day is kept
            for kind in records.KINDS:
                if any(True for _ in backend.list_keys(base.child(kind, day))):
                    backend.delete_tree(base.child(kind, day))
                    deleted.append(f"{kind}/{day}")
        return deleted


def open_outcomes(config: Any, model: Any, metrics: Any) -> Outcomes:
    """The records of `model` under config.feedback_uri (its store's credentials: the pod's environment)."""
    base = parse_uri(config.feedback_uri, field="spec.feedback.uri")
    backend = backend_for(base)
    recorder = PredictionRecorder(
        backend, base, writer=config.pod_name, version=model.version, classifier=model.classifier,
        input_names=list(model.schema.names) if config.feedback_log_inputs else None,
        flush_seconds=config.records_flush_seconds,
        on_dropped=metrics.records.labels("dropped").inc, on_written=metrics.records.labels("written").inc)
    index = PredictionIndex(backend, base, max_delay_seconds=config.feedback_max_delay_seconds)
    recorder.on_flushed = index.add  # its own segments are known the moment they leave the buffer
    recorder.start()
    return Outcomes(recorder, index, LabelWriter(backend, base, writer=config.pod_name),
                    ThreadPoolExecutor(max_workers=1, thread_name_prefix="feedback"), config.feedback_retention_seconds)
