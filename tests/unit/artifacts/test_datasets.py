"""Dataset formats have one home: inferred from a URI's extension, parsed from bytes."""
from __future__ import annotations

import io

import pandas as pd
import pytest

from modelloop.artifacts.datasets import infer_format, parse_frame


@pytest.mark.parametrize("uri, fmt", [("s3://b/x.csv", "csv"), ("s3://b/X.CSV", "csv"), ("file:///d/x.parquet", "parquet"),
                                      ("pvc://c/x.pq", "parquet"), ("s3://b/export", None), ("s3://b/x.csv.gz", None)])
def test_the_format_a_uri_names(uri, fmt):
    assert infer_format(uri) == fmt


def test_both_formats_parse_to_the_same_frame():
    frame = pd.DataFrame({"a": [1.5, 2.5], "plan": ["x", "y"]})
    buf = io.BytesIO()
    frame.to_parquet(buf)
    pd.testing.assert_frame_equal(parse_frame(buf.getvalue(), "parquet"), frame)
    pd.testing.assert_frame_equal(parse_frame(frame.to_csv(index=False).encode(), "csv"), frame)


def test_an_unknown_format_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown dataset format 'json'"):
        parse_frame(b"{}", "json")
