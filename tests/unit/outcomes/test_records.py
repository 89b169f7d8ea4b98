"""Row ids of prediction records (docs/outcomes.md: `<request id>:<row>`), built without a Python string per row."""
from __future__ import annotations

import pyarrow as pa
import pytest
from modelloop.outcomes import records


def python_ids(request_ids: list[str], counts: list[int]) -> list[str]:
    return [f"{rid}:{row}" for rid, n in zip(request_ids, counts) for row in range(n)]


@pytest.mark.parametrize("request_ids", [
    ["0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210"],  # the server's own: one width
    ["a", "client-7", "x" * 128, "b"],                                          # clients' ids: any width
    ["same", "same"],
    [],
])
def test_first_row_ids_are_the_request_ids_with_row_zero(request_ids):
    ids = records.first_row_ids(request_ids)
    assert ids.type == pa.string()
    assert ids.to_pylist() == python_ids(request_ids, [1] * len(request_ids))


def test_row_ids_number_every_row_of_every_request():
    request_ids, counts = ["r1", "request-2", "r3"], [3, 1, 2]
    assert records.row_ids(request_ids, counts).to_pylist() == python_ids(request_ids, counts)


def test_a_segment_reads_back_whatever_codec_wrote_it():
    table = pa.table({"id": records.first_row_ids(["a", "b"]), "version": pa.array([1, 1], pa.int32()),
                      "time": pa.array([1, 2], pa.int64()), "label": pa.array(["0", "1"]),
                      "value": pa.nulls(2, pa.float64()), "proba": pa.array([0.5, 0.9])})
    for codec in ("zstd", "snappy"):
        decoded = records.decode(records.encode(table, compression=codec), records.PREDICTIONS, max_rows=10)
        assert decoded.column("id").to_pylist() == ["a:0", "b:0"]
