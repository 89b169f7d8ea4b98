"""The prediction recorder (modelloop_server.recording.PredictionRecorder) on its own: what a flush writes, what
feedback finds before a flush, and what an unreachable store keeps and drops. The same recorder runs inside the
real servers of test_server_feedback.py."""
from __future__ import annotations

import numpy as np
import pytest

from modelloop.artifacts.backends import backend_for
from modelloop.artifacts.errors import StorageError
from modelloop.artifacts.uri import parse_uri
from modelloop.outcomes import records
from modelloop.outcomes.join import hash_ids
from modelloop_server import recording
from modelloop_server.recording import PredictionRecorder


class FlakyBackend:
    """The file backend, refusing writes while `down`."""

    def __init__(self, inner):
        self.inner, self.down, self.written = inner, False, []

    def write(self, uri, data):
        if self.down:
            raise StorageError(f"{uri}: the store is unreachable")
        self.written.append(uri)
        self.inner.write(uri, data)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.fixture()
def store(tmp_path):
    base = parse_uri(f"file://{tmp_path}")
    return FlakyBackend(backend_for(base)), base


def recorder(store, **kw) -> PredictionRecorder:
    backend, base = store
    return PredictionRecorder(backend, base, writer="pod-1", version=3, classifier=True, **kw)


def read_back(store) -> list[dict]:
    backend, base = store
    rows = []
    for uri in backend.written:
        rows += records.decode(backend.read(uri), records.PREDICTIONS, max_rows=1000,
                              columns=[]).to_pylist()
    return rows


def proba(*confidences: float) -> np.ndarray:
    return np.array([[1 - c, c] for c in confidences])


def test_a_flush_writes_every_row_with_its_id_version_time_label_and_confidence(store):
    rec = recorder(store)
    rec.record(["a"], [1], np.array(["yes"], dtype=object), proba(0.9))
    rec.record(["b", "c"], [2, 1], np.array(["no", "yes", "no"], dtype=object), proba(0.6, 0.7, 0.8))
    assert rec.flush() == 4
    rows = read_back(store)
    assert [r["id"] for r in rows] == ["a:0", "b:0", "b:1", "c:0"]
    assert [r["label"] for r in rows] == ["yes", "no", "yes", "no"]
    assert [r["proba"] for r in rows] == pytest.approx([0.9, 0.6, 0.7, 0.8])
    assert {r["version"] for r in rows} == {3} and all(r["time"] > 1_700_000_000_000 for r in rows)
    assert rec.flush() == 0  # nothing new: no empty segment


def test_batches_without_probabilities_record_no_confidence(store):
    rec = recorder(store)
    rec.record(["a"], [1], np.array([1]), None)
    rec.record(["b"], [1], np.array([0]), proba(0.75))
    rec.flush()
    rows = read_back(store)
    assert [r["label"] for r in rows] == ["1", "0"]  # integer labels (ONNX) recorded as text
    assert rows[0]["proba"] is None and rows[1]["proba"] == pytest.approx(0.75)


def test_ids_not_yet_flushed_are_found_for_feedback(store):
    rec = recorder(store)
    rec.record(["a", "b"], [1, 2], np.array(["x", "y", "z"], dtype=object), proba(0.5, 0.5, 0.5))
    assert set(rec.unflushed_hashes().tolist()) == set(hash_ids(np.array(["a:0", "b:0", "b:1"], dtype=object)).tolist())
    rec.flush()
    assert rec.unflushed_hashes().size == 0


def test_an_unreachable_store_keeps_the_rows_in_order_for_the_next_flush(store):
    backend, _ = store
    rec = recorder(store)
    rec.record(["a"], [1], np.array(["yes"], dtype=object), proba(0.9))
    backend.down = True
    assert rec.flush() == 0
    rec.record(["b"], [1], np.array(["no"], dtype=object), proba(0.8))
    assert set(rec.unflushed_hashes().tolist()) == set(hash_ids(np.array(["a:0", "b:0"], dtype=object)).tolist())
    backend.down = False
    assert rec.flush() == 2
    assert [r["id"] for r in read_back(store)] == ["a:0", "b:0"]


def test_beyond_the_bound_the_oldest_rows_are_dropped_and_counted(store):
    backend, _ = store
    dropped: list[int] = []
    rec = recorder(store, max_buffered_rows=5, on_dropped=dropped.append)
    backend.down = True
    for i in range(4):
        rec.record([f"r{i}"], [2], np.array(["yes", "no"], dtype=object), proba(0.6, 0.7))
        rec.flush()
    assert sum(dropped) == 4  # 8 rows recorded, at most 5 kept: the two oldest batches of two rows
    backend.down = False
    assert rec.flush() == 4
    assert [r["id"] for r in read_back(store)] == ["r2:0", "r2:1", "r3:0", "r3:1"]


def test_inputs_are_recorded_only_when_asked(store):
    rec = recorder(store, input_names=["tenure", "plan"])
    rows = np.array([[1.0, "basic"], [2.0, "pro"]], dtype=object)
    rec.record(["a"], [2], np.array(["yes", "no"], dtype=object), proba(0.6, 0.7), rows)
    rec.flush()
    written = read_back(store)
    assert [r[records.INPUT_PREFIX + "plan"] for r in written] == ["basic", "pro"]
    plain = recorder(store)
    plain.record(["b"], [1], np.array(["yes"], dtype=object), proba(0.6), rows[:1])
    plain.flush()
    assert not any(k.startswith(records.INPUT_PREFIX) for k in read_back(store)[-1])


@pytest.mark.parametrize("arrays", [
    [np.array([1], np.int64), np.array([0, 1], np.int64)],                   # labels of batches of 1 and 2 rows
    [np.array([[0.2, 0.8]]), np.array([[0.6, 0.4], [0.1, 0.9]])],             # probabilities
    [np.array([[1.5]], np.float32), np.array([[2.5], [3.5]], np.float32)],    # a regressor's (n, 1) outputs
    [np.array(["a"], object), np.array(["b", "c"], object)],                  # scikit-learn's text labels
    [np.array([1], np.int64), np.array([2.0])],                               # two dtypes
    [np.arange(6, dtype=np.float64).reshape(3, 2)[:, :1], np.array([[7.0]])],  # a view that is not contiguous
])
def test_a_flush_concatenates_batches_as_numpy_does(arrays):
    rows = sum(map(len, arrays))
    assert np.array_equal(recording._concatenate(arrays, rows), np.concatenate(arrays))
    assert np.array_equal(recording._concatenate(arrays, rows, flat=True), np.concatenate(arrays, axis=None))
