"""The sketch format of docs/contracts.md: building, counting, live accumulation, merge, window, validation."""
from __future__ import annotations

import copy
import json
import threading

import numpy as np
import pandas as pd
import pytest

from modelloop.drift.sketch import (
    FORMAT, LiveSketch, SketchError, build_reference, category_key, count_into, empty_like, merge, merge_all,
    validate, window,
)


@pytest.fixture
def reference() -> dict:
    rng = np.random.default_rng(1)
    return build_reference({"age": rng.normal(40, 10, 1000), "color": rng.choice(["red", "blue", "green"], 1000)},
                           categorical=["color"], bins=10)


def _counts(sketch: dict, name: str) -> list[int]:
    return next(f["counts"] for f in sketch["features"] if f["name"] == name)


def test_reference_is_json_serialisable_and_valid(reference):
    assert json.loads(json.dumps(reference)) == reference
    assert validate(reference) is reference
    assert reference["format"] == FORMAT and reference["rows"] == 1000
    assert [f["name"] for f in reference["features"]] == ["age", "color"]


def test_numeric_edges_are_reference_quantiles_and_counts_are_balanced():
    x = np.arange(1000, dtype=float)
    ref = build_reference({"x": x}, bins=4)
    (f,) = ref["features"]
    assert f["kind"] == "numeric"
    assert f["edges"] == pytest.approx(np.quantile(x, [0.25, 0.5, 0.75]).tolist())
    assert f["counts"] == [250, 250, 250, 250] and f["missing"] == 0


def test_numeric_bins_are_left_closed_with_open_outer_bins():
    sketch = empty_like(build_reference({"x": [1.0, 2.0, 3.0, 4.0]}, bins=2))
    edges = sketch["features"][0]["edges"]
    assert edges == [2.5]
    counted = count_into(sketch, {"x": [-np.inf, 2.4999, 2.5, 1e300, np.inf]})
    assert _counts(counted, "x") == [2, 3]


def test_large_batches_count_exactly_like_searchsorted():
    rng = np.random.default_rng(3)
    ref = build_reference({"x": rng.standard_normal(50_000), "d": rng.integers(0, 7, 50_000)})
    edges = np.array(ref["features"][0]["edges"])
    live = np.concatenate([rng.standard_normal(200_000) * 3, edges, np.nextafter(edges, -np.inf), [np.nan] * 5])
    discrete = rng.integers(-2, 9, live.size)
    counted = count_into(empty_like(ref), {"x": live, "d": discrete})
    expected = np.bincount(np.searchsorted(edges, live[~np.isnan(live)], side="right"), minlength=edges.size + 1)
    assert _counts(counted, "x") == expected.tolist()
    assert counted["features"][0]["missing"] == 5
    d_edges = np.array(ref["features"][1]["edges"])
    assert _counts(counted, "d") == np.bincount(np.searchsorted(d_edges, discrete, side="right"),
                                                minlength=d_edges.size + 1).tolist()


def test_large_reference_edges_equal_numpy_quantiles():
    rng = np.random.default_rng(4)
    for x in (rng.standard_normal(300_000), rng.lognormal(0, 3, 300_000), rng.integers(0, 5, 300_000) * 1.0):
        edges = build_reference({"x": x})["features"][0]["edges"]
        np.testing.assert_allclose(edges, np.unique(np.quantile(x, np.linspace(0, 1, 101)[1:-1])), rtol=1e-12)


def test_constant_column_gets_one_edge_and_all_missing_column_none():
    ref = build_reference({"c": [5.0] * 10, "nan": [np.nan] * 10})
    const, empty = ref["features"]
    assert const["edges"] == [5.0] and const["counts"] == [0, 10]
    assert empty["edges"] == [] and empty["counts"] == [0] and empty["missing"] == 10
    assert _counts(count_into(ref, {"c": [4.0, 5.0, 6.0], "nan": [1.0, 2.0, None]}), "c") == [1, 12]


def test_missing_values_are_counted_apart_for_both_kinds():
    ref = build_reference({"x": [1.0, np.nan, 3.0, None], "k": ["a", None, "", np.nan]}, categorical=["k"])
    x, k = ref["features"]
    assert x["missing"] == 2 and sum(x["counts"]) == 2
    assert k["missing"] == 3 and k["categories"] == ["a"] and k["counts"] == [1, 0]
    live = count_into(empty_like(ref), {"x": ["2.5", "abc", None], "k": [pd.NA, "a", float("nan")]})
    assert live["features"][0]["missing"] == 2 and live["features"][1]["missing"] == 2


def test_categories_are_most_frequent_first_and_capped_with_rest_in_other():
    values = ["a"] * 5 + ["b"] * 3 + ["c"] * 2 + ["d"] * 1
    (f,) = build_reference({"k": values}, max_categories=2)["features"]
    assert f["kind"] == "categorical"
    assert f["categories"] == ["a", "b"] and f["counts"] == [5, 3, 3]


def test_string_columns_are_categorical_without_being_named():
    (f,) = build_reference({"k": np.array(["x", "y", "x"], dtype=object)})["features"]
    assert f["kind"] == "categorical" and f["categories"] == ["x", "y"]


def test_unseen_categories_count_as_other():
    ref = build_reference({"k": ["a", "b"]}, categorical=["k"])
    assert _counts(count_into(ref, {"k": ["a", "zzz", "yyy", "b"]}), "k") == [2, 2, 2]


def test_categories_compare_as_strings_and_integral_floats_as_integers():
    ref = build_reference({"k": [1, 2, 2]}, categorical=["k"])
    assert ref["features"][0]["categories"] == ["2", "1"]
    assert _counts(count_into(empty_like(ref), {"k": [1.0, "1", np.float64(2.0), 2.5]}), "k") == [1, 2, 1]
    assert category_key(1.0) == "1" and category_key(b"x") == "x" and category_key("") is None


def test_count_into_returns_a_new_sketch_and_ignores_extra_columns(reference):
    before = copy.deepcopy(reference)
    counted = count_into(reference, {"age": [30.0], "color": ["red"], "target": [1]})
    assert reference == before
    assert counted["rows"] == 1001 and validate(counted)


def test_count_into_rejects_data_without_a_feature_or_of_uneven_lengths(reference):
    with pytest.raises(SketchError, match="color"):
        count_into(reference, {"age": [1.0]})
    with pytest.raises(SketchError, match="length"):
        count_into(reference, {"age": [1.0, 2.0], "color": ["red"]})


def test_empty_like_keeps_bins_and_zeroes_counts(reference):
    empty = empty_like(reference)
    assert empty["rows"] == 0
    for f, r in zip(empty["features"], reference["features"]):
        assert set(f["counts"]) == {0} and len(f["counts"]) == len(r["counts"]) and f["missing"] == 0
        assert f.get("edges") == r.get("edges") and f.get("categories") == r.get("categories")


def test_live_sketch_accumulates_columns_and_rows_like_count_into(reference):
    live = LiveSketch(reference)
    live.observe_columns(pd.DataFrame({"age": [30.0, np.nan], "color": ["red", "pink"]}))
    live.observe_rows([[55.0, "blue"], [20.0, None]])
    snap = live.snapshot(modelVersion=3)
    expected = count_into(empty_like(reference), {"age": [30.0, np.nan, 55.0, 20.0],
                                                   "color": ["red", "pink", "blue", None]})
    assert snap["features"] == expected["features"] and snap["rows"] == 4
    assert snap["modelVersion"] == 3 and snap["instance"] == live.instance and len(live.instance) == 32
    assert snap["started"].endswith("Z") and validate(json.loads(json.dumps(snap)))


def test_live_sketch_rejects_rows_of_the_wrong_width(reference):
    with pytest.raises(SketchError, match="2 values per row"):
        LiveSketch(reference).observe_rows(np.zeros((3, 5)))


def test_live_sketch_counts_every_row_under_concurrent_observers(reference):
    live = LiveSketch(reference)
    batch = {"age": np.full(10, 33.0), "color": np.array(["red"] * 10, dtype=object)}

    def observe():
        for _ in range(200):
            live.observe_columns(batch)

    threads = [threading.Thread(target=observe) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = live.snapshot()
    assert snap["rows"] == 8000 and sum(snap["features"][1]["counts"]) == 8000


def test_merge_adds_counts_and_keeps_only_shared_non_process_keys(reference):
    a = {**count_into(empty_like(reference), {"age": [1.0], "color": ["red"]}), "instance": "a", "modelVersion": 2}
    b = {**count_into(empty_like(reference), {"age": [99.0, 1.0], "color": ["x", "red"]}), "instance": "b",
         "modelVersion": 2}
    m = merge(a, b)
    assert m["rows"] == 3 and m["modelVersion"] == 2 and "instance" not in m
    assert [x + y for x, y in zip(_counts(a, "age"), _counts(b, "age"))] == _counts(m, "age")
    assert merge_all([a, b, a])["rows"] == 4 and merge_all([]) is None


def test_merge_of_different_bins_names_the_feature(reference):
    other = build_reference({"age": [1.0, 2.0, 3.0], "color": ["red", "blue", "red"]}, categorical=["color"])
    with pytest.raises(SketchError, match="'age'"):
        merge(reference, other)


def test_window_is_the_difference_of_two_snapshots_of_one_instance(reference):
    live = LiveSketch(reference)
    live.observe_columns({"age": [30.0, 31.0], "color": ["red", "red"]})
    first = live.snapshot()
    live.observe_columns({"age": [80.0], "color": ["blue"]})
    w = window(live.snapshot(), first)
    assert w["rows"] == 1
    assert w["features"] == count_into(empty_like(reference), {"age": [80.0], "color": ["blue"]})["features"]


def test_window_after_a_restart_is_the_new_snapshot(reference):
    old, new = LiveSketch(reference), LiveSketch(reference)
    old.observe_columns({"age": [1.0] * 5, "color": ["red"] * 5})
    new.observe_columns({"age": [2.0], "color": ["red"]})
    assert window(new.snapshot(), old.snapshot()) == new.snapshot()
    assert window(new.snapshot(), None) == new.snapshot()


def test_window_with_a_decreased_count_is_a_counter_reset(reference):
    live = LiveSketch(reference)
    live.observe_columns({"age": [1.0, 2.0], "color": ["red", "blue"]})
    previous = live.snapshot()
    current = copy.deepcopy(previous)
    current["features"][1]["counts"] = [0] * len(current["features"][1]["counts"])
    current["features"][1]["missing"] = 2
    assert window(current, previous) == current


def test_window_between_equal_snapshots_is_empty(reference):
    live = LiveSketch(reference)
    live.observe_columns({"age": [1.0], "color": ["red"]})
    snap = live.snapshot()
    assert window(snap, snap)["rows"] == 0


@pytest.mark.parametrize("mutate, message", [
    (lambda s: s.update(format="other/v9"), "format"),
    (lambda s: s.update(rows=-1), "rows"),
    (lambda s: s["features"][0].update(kind="ordinal"), "unknown kind 'ordinal'"),
    (lambda s: s["features"][0].update(counts=s["features"][0]["counts"][:-1]), "'age'.*counts"),
    (lambda s: s["features"][0].update(edges=list(reversed(s["features"][0]["edges"]))), "ascending"),
    (lambda s: s["features"][0]["edges"].__setitem__(0, float("inf")), "finite"),
    (lambda s: s["features"][1]["counts"].__setitem__(0, -1), "'color'.*non-negative"),
    (lambda s: s["features"][1].update(categories=["red"]), "'color'.*categories need"),
    (lambda s: s["features"][1].update(missing=7), "must equal rows"),
    (lambda s: s["features"].append(copy.deepcopy(s["features"][0])), "unique"),
])
def test_malformed_sketches_are_rejected_with_a_clear_message(reference, mutate, message):
    bad = copy.deepcopy(reference)
    mutate(bad)
    with pytest.raises(SketchError, match=message):
        validate(bad)


def test_sketch_error_is_a_value_error():
    assert issubclass(SketchError, ValueError)
