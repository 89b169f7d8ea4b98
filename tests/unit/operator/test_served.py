"""The operator's reading of the servers' /served and /compare answers (modelloop.served): checked field by field,
merged over a version's pods, and the p99 of the merged histogram."""
from __future__ import annotations

import copy

import pytest

from modelloop.analysis import Live, Paired, Served
from modelloop.served import MAX_BUCKETS, histogram_p99, merge_served, parse_live, parse_paired, parse_served

BOUNDS = [0.01, 0.05, 0.1]


def served(counts: list[int], *, errors: int = 0, client_errors: int = 0, shadow: int = 0,
           bounds: list[float] = BOUNDS) -> dict:
    return {"modelVersion": 2, "instance": "3f2a", "since": 1_796_000_000_000, "requests": sum(counts),
            "errors": errors, "clientErrors": client_errors, "shadowRequests": shadow,
            "latency": {"bounds": bounds, "counts": counts}}


def compare(**fields) -> dict:
    return {"since": 1_796_000_000_000, "champion": 1, "challenger": 2, "rows": 100, "agreed": 90,
            "outputDistance": None, "championOnlyRight": 7, "challengerOnlyRight": 3, "lossDifferences": None, **fields}


def test_pods_are_summed_and_p99_is_interpolated_in_the_merged_histogram():
    # Merged: [100, 80, 20, 0] of 200. The 99th percentile is the 198th value: 18 into the 20 of (0.05, 0.1],
    # so 0.05 + 0.05 * 18 / 20 = 0.095 (each pod alone would give 0.0885 and 0.0972).
    pods = [served([60, 50, 5, 0], errors=2, client_errors=3, shadow=115), served([40, 30, 15, 0], errors=1)]
    merged = merge_served(pods)
    assert (merged.requests, merged.errors) == (200, 3)
    assert merged.p99_seconds == pytest.approx(0.095)
    assert histogram_p99(BOUNDS, [60, 50, 5, 0]) == pytest.approx(0.0885)


def test_p99_in_the_first_bucket_starts_from_zero_and_past_the_last_bound_is_the_last_bound():
    assert histogram_p99(BOUNDS, [100, 0, 0, 0]) == pytest.approx(0.0099)
    assert histogram_p99(BOUNDS, [90, 0, 0, 10]) == 0.1
    assert histogram_p99(BOUNDS, [0, 0, 0, 0]) is None


def test_no_requests_give_no_p99():
    assert merge_served([served([0, 0, 0, 0])]) == Served(0, 0, None)
    assert merge_served([]) == Served(0, 0, None)


def test_histograms_with_other_bounds_are_not_added():
    with pytest.raises(ValueError, match=r"served\[1\].latency.bounds .* differ from served\[0\]'s"):
        merge_served([served([1, 0, 0, 0]), served([1, 0, 0, 0], bounds=[0.01, 0.05, 0.2])])


def test_a_served_answer_is_returned_as_checked_values():
    doc = served([3, 2, 1, 0], errors=1, client_errors=2, shadow=6)
    assert parse_served(doc) == doc


DELETE = object()


def with_field(path: str, value) -> dict:
    """A good answer with one field (a dotted path) replaced, or deleted."""
    doc = copy.deepcopy(served([3, 2, 1, 0], errors=1))
    *parents, last = path.split(".")
    target = doc
    for key in parents:
        target = target[key]
    if value is DELETE:
        del target[last]
    else:
        target[last] = value
    return doc


@pytest.mark.parametrize(("doc", "field"), [
    ([], "served must be a JSON object"),
    (with_field("requests", -1), "served.requests"),
    (with_field("requests", True), "served.requests"),
    (with_field("requests", 6.0), "served.requests"),
    (with_field("requests", "6"), "served.requests"),
    (with_field("requests", 2**60), "served.requests"),
    (with_field("modelVersion", DELETE), "served.modelVersion"),
    (with_field("since", None), "served.since"),
    (with_field("instance", ""), "served.instance"),
    (with_field("instance", "x" * 129), "served.instance"),
    (with_field("instance", 7), "served.instance"),
    (with_field("errors", 7), "served.errors"),
    (with_field("clientErrors", 6), r"served.errors \+ served.clientErrors"),
    (with_field("shadowRequests", -3), "served.shadowRequests"),
    (with_field("latency", [1, 2]), "served.latency must be a JSON object"),
    (with_field("latency.bounds", []), "served.latency.bounds must be a list"),
    (with_field("latency.bounds", "0.1"), "served.latency.bounds must be a list"),
    (with_field("latency.bounds", [0.01] * (MAX_BUCKETS + 1)), "served.latency.bounds must be a list"),
    (with_field("latency.bounds", [0.01, 0.05, float("nan")]), r"served.latency.bounds\[2\]"),
    (with_field("latency.bounds", [0.01, 0.05, float("inf")]), r"served.latency.bounds\[2\]"),
    (with_field("latency.bounds", [0.0, 0.05, 0.1]), r"served.latency.bounds\[0\]"),
    (with_field("latency.bounds", [0.01, True, 0.1]), r"served.latency.bounds\[1\]"),
    (with_field("latency.bounds", [0.05, 0.01, 0.1]), r"served.latency.bounds\[1\] 0.01 must be above"),
    (with_field("latency.bounds", [0.01, 0.01, 0.1]), r"served.latency.bounds\[1\] 0.01 must be above"),
    (with_field("latency.counts", [3, 2, 1]), "served.latency.counts must be a list of 4"),
    (with_field("latency.counts", [3, 2, 1, 0, 0]), "served.latency.counts must be a list of 4"),
    (with_field("latency.counts", [3, 2, -1, 2]), r"served.latency.counts\[2\]"),
    (with_field("latency.counts", [3, 2, 1.5, 0]), r"served.latency.counts\[2\]"),
    (with_field("latency.counts", [3, 2, 1, 1]), "add up to 7, not to served.requests"),
    (with_field("latency.counts", DELETE), "served.latency.counts must be a list"),
])
def test_hostile_or_broken_served_answers_are_refused_naming_the_field(doc, field):
    with pytest.raises(ValueError, match=field):
        parse_served(doc)


def test_a_compare_answer_becomes_the_paired_numbers_of_the_analysis():
    assert parse_paired(compare(), champion=1, challenger=2) == Paired(
        rows=100, agreed=90, champion_only_right=7, challenger_only_right=3)
    regressor = compare(agreed=None, outputDistance=0.12, championOnlyRight=0, challengerOnlyRight=0,
                        lossDifferences=[40, -0.5, 1.25])
    assert parse_paired(regressor) == Paired(rows=100, output_distance=0.12, loss_differences=(40, -0.5, 1.25))


@pytest.mark.parametrize(("doc", "field"), [
    ("rows", "compare must be a JSON object"),
    (compare(rows=-1), "compare.rows"),
    (compare(rows=None), "compare.rows"),
    (compare(agreed=101), "compare.agreed"),
    (compare(agreed=9.5), "compare.agreed"),
    (compare(championOnlyRight=60, challengerOnlyRight=41), "championOnlyRight \\+ compare.challengerOnlyRight"),
    (compare(challengerOnlyRight=False), "compare.challengerOnlyRight"),
    (compare(outputDistance=-0.1), "compare.outputDistance must be 0 or more"),
    (compare(outputDistance=float("nan")), "compare.outputDistance must be a finite number"),
    (compare(outputDistance="0.1"), "compare.outputDistance must be a finite number"),
    (compare(lossDifferences=[1, 2]), "compare.lossDifferences must be null or"),
    (compare(lossDifferences={"n": 1}), "compare.lossDifferences must be null or"),
    (compare(lossDifferences=[101, 0.1, 0.2]), r"compare.lossDifferences\[0\]"),
    (compare(lossDifferences=[10, float("inf"), 0.2]), r"compare.lossDifferences\[1\]"),
    (compare(lossDifferences=[10, 0.1, -0.2]), r"compare.lossDifferences\[2\] \(sd\)"),
    (compare(champion="1"), "compare.champion"),
    (compare(since=-5), "compare.since"),
])
def test_hostile_or_broken_compare_answers_are_refused_naming_the_field(doc, field):
    with pytest.raises(ValueError, match=field):
        parse_paired(doc)


def test_a_compare_answer_about_other_versions_is_refused():
    with pytest.raises(ValueError, match="compare.challenger is version 2, not the version 3 that was asked for"):
        parse_paired(compare(), champion=1, challenger=3)


PERFORMANCE = {"since": 1, "versions": {
    "1": {"labelled": 600, "metrics": {"accuracy": {"value": 0.86, "low": 0.83, "high": 0.89},
                                       "f1": {"value": 0.7, "low": 0.6, "high": 0.8}}},
    "2": {"labelled": 0, "metrics": {}},
}}


def test_a_performance_answer_becomes_each_versions_live_metric():
    assert parse_live(PERFORMANCE, "accuracy") == {1: Live("accuracy", 600, 0.86, 0.83, 0.89)}
    assert parse_live(PERFORMANCE, "mae") == {}, "a version without the metric is left out"


@pytest.mark.parametrize("doc, field", [
    ([], "performance"),
    ({"versions": []}, "performance.versions"),
    ({"versions": {"two": {"labelled": 1}}}, "not a version number"),
    ({"versions": {"1": {"labelled": -1}}}, "performance.versions.1.labelled"),
    ({"versions": {"1": {"labelled": 5, "metrics": {"accuracy": {"value": 0.5, "low": 0.1}}}}},
     "performance.versions.1.metrics.accuracy.high"),
    ({"versions": {"1": {"labelled": 5, "metrics": {"accuracy": {"value": 0.9, "low": 0.1, "high": 0.5}}}}},
     "low <= value <= high"),
    ({"versions": {"1": {"labelled": 5, "metrics": {"accuracy": {"value": True, "low": 0, "high": 1}}}}},
     "accuracy.value"),
])
def test_hostile_or_broken_performance_answers_are_refused_naming_the_field(doc, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.").replace("<", "<")):
        parse_live(doc, "accuracy")
