"""What the operator reads from the model servers for a champion/challenger analysis (pure): the answers of
`GET :8081/v2/models/{name}/served` and `/compare` checked field by field, and the per-pod counters of one version
merged into the `modelloop.analysis.Served` the gates take (docs/challenger.md, "What the operator reads").

A server's answer is input from the data plane: every field is checked for its type and bounds before anything is
computed from it, and a refusal names the field (`ValueError("served.latency.counts[3] ...")`).
"""
from __future__ import annotations

import math
from typing import Any

from .analysis import Live, Paired, Served

MAX_BUCKETS = 64             # finite latency bounds in an answer
MAX_COUNT = 2**53            # integers beyond this are not exact in every JSON reader
MAX_INSTANCE_LENGTH = 128
P99 = 0.99


def parse_served(doc: Any) -> dict[str, Any]:
    """A /served answer, checked: `{"modelVersion", "instance", "since", "requests", "errors", "clientErrors",
    "shadowRequests", "latency": {"bounds", "counts"}}` with whole counts >= 0, at most MAX_BUCKETS finite increasing
    bounds, one count more than bounds (the last for +Inf), the counts adding up to the requests, and errors,
    client errors and shadow copies each no more than the requests. The same fields, as plain values; ValueError
    naming the field otherwise."""
    doc = _object(doc, "served")
    out = {"modelVersion": _count(doc, "modelVersion", "served"), "since": _count(doc, "since", "served")}
    instance = doc.get("instance")
    if not isinstance(instance, str) or not 0 < len(instance) <= MAX_INSTANCE_LENGTH:
        raise ValueError(f"served.instance must be a string of 1 to {MAX_INSTANCE_LENGTH} characters, "
                         f"got {_show(instance)}")
    out["instance"] = instance
    requests = out["requests"] = _count(doc, "requests", "served")
    for name in ("errors", "clientErrors", "shadowRequests"):
        out[name] = _count(doc, name, "served", most=requests)
    if out["errors"] + out["clientErrors"] > requests:
        raise ValueError(f"served.errors + served.clientErrors ({out['errors']} + {out['clientErrors']}) exceed "
                         f"served.requests ({requests})")
    latency = _object(doc.get("latency"), "served.latency")
    bounds = latency.get("bounds")
    if not isinstance(bounds, list) or not 0 < len(bounds) <= MAX_BUCKETS:
        raise ValueError(f"served.latency.bounds must be a list of 1 to {MAX_BUCKETS} numbers, got {_show(bounds)}")
    for i, bound in enumerate(bounds):
        if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not math.isfinite(bound) or bound <= 0:
            raise ValueError(f"served.latency.bounds[{i}] must be a finite number of seconds above 0, got "
                             f"{_show(bound)}")
        if i and bound <= bounds[i - 1]:
            raise ValueError(f"served.latency.bounds[{i}] {bound!r} must be above bounds[{i - 1}] {bounds[i - 1]!r}")
    counts = latency.get("counts")
    if not isinstance(counts, list) or len(counts) != len(bounds) + 1:
        raise ValueError(f"served.latency.counts must be a list of {len(bounds) + 1} counts (one per bound and one "
                         f"for +Inf), got {_show(counts)}")
    counts = [_count(counts, i, "served.latency.counts") for i in range(len(counts))]
    if sum(counts) != requests:
        raise ValueError(f"served.latency.counts add up to {sum(counts)}, not to served.requests ({requests})")
    out["latency"] = {"bounds": [float(b) for b in bounds], "counts": counts}
    return out


def merge_served(docs: list[Any]) -> Served:
    """One version's counters over its pods: requests and errors summed, and the p99 latency of the summed
    histogram (`histogram_p99`). Every answer is checked (`parse_served`) and all must share the same bounds."""
    parsed = [parse_served(doc) for doc in docs]
    if not parsed:
        return Served(0, 0, None)
    bounds = parsed[0]["latency"]["bounds"]
    counts = [0] * (len(bounds) + 1)
    for i, doc in enumerate(parsed):
        if doc["latency"]["bounds"] != bounds:
            raise ValueError(f"served[{i}].latency.bounds {doc['latency']['bounds']} differ from served[0]'s "
                             f"{bounds}: the histograms of servers with other buckets cannot be added")
        counts = [total + n for total, n in zip(counts, doc["latency"]["counts"])]
    return Served(sum(d["requests"] for d in parsed), sum(d["errors"] for d in parsed), histogram_p99(bounds, counts))


def histogram_p99(bounds: list[float], counts: list[int]) -> float | None:
    """The 99th percentile of a histogram (bucket i counts the values in (bounds[i-1], bounds[i]], the first from 0,
    the last above every bound), interpolated linearly inside its bucket as Prometheus' histogram_quantile does;
    the largest finite bound when it falls in the last bucket; None when the histogram is empty."""
    total = sum(counts)
    if total == 0:
        return None
    rank = P99 * total
    below = 0
    for i, count in enumerate(counts[:-1]):
        if count and below + count >= rank:
            lower = bounds[i - 1] if i else 0.0
            return lower + (bounds[i] - lower) * (rank - below) / count
        below += count
    return bounds[-1]


def parse_paired(doc: Any, *, champion: int | None = None, challenger: int | None = None) -> Paired:
    """A /compare answer, checked, as modelloop.analysis.Paired: whole counts >= 0, `agreed` and the discordant
    pairs no more than `rows`, a finite non-negative `outputDistance` or null, `lossDifferences` null or
    `[n <= rows, finite mean, finite sd >= 0]`; with `champion`/`challenger`, the answer must be about those
    versions. ValueError naming the field otherwise.

    A null `outputDistance` with rows is an infinite distance (the server's JSON has no infinity): the agreement
    gate reads None as infinitely far, as it should."""
    doc = _object(doc, "compare")
    for name, expected in (("champion", champion), ("challenger", challenger)):
        got = _count(doc, name, "compare")
        if expected is not None and got != expected:
            raise ValueError(f"compare.{name} is version {got}, not the version {expected} that was asked for")
    _count(doc, "since", "compare")
    rows = _count(doc, "rows", "compare")
    agreed = None if doc.get("agreed") is None else _count(doc, "agreed", "compare", most=rows)
    only_champion = _count(doc, "championOnlyRight", "compare", most=rows)
    only_challenger = _count(doc, "challengerOnlyRight", "compare", most=rows)
    if only_champion + only_challenger > rows:
        raise ValueError(f"compare.championOnlyRight + compare.challengerOnlyRight ({only_champion} + "
                         f"{only_challenger}) exceed compare.rows ({rows})")
    distance = doc.get("outputDistance")
    if distance is not None:
        distance = _number(distance, "compare.outputDistance")
        if distance < 0:
            raise ValueError(f"compare.outputDistance must be 0 or more, got {distance!r}")
    differences = doc.get("lossDifferences")
    if differences is not None:
        if not isinstance(differences, list) or len(differences) != 3:
            raise ValueError(f"compare.lossDifferences must be null or [n, mean, sd], got {_show(differences)}")
        n = _count(differences, 0, "compare.lossDifferences", most=rows)
        mean = _number(differences[1], "compare.lossDifferences[1]")
        sd = _number(differences[2], "compare.lossDifferences[2]")
        if sd < 0:
            raise ValueError(f"compare.lossDifferences[2] (sd) must be 0 or more, got {sd!r}")
        differences = (n, mean, sd)
    return Paired(rows=rows, agreed=agreed, output_distance=distance, champion_only_right=only_champion,
                  challenger_only_right=only_challenger, loss_differences=differences)


def parse_live(doc: Any, metric: str) -> dict[int, Live]:
    """A /performance answer, checked, as each version's Live `metric`: `versions` an object of version numbers, each
    with a whole `labelled` count and, when measured, the metric's finite `value`, `low` and `high` (low <= value <=
    high). Versions without that metric are left out. ValueError naming the field otherwise."""
    versions = _object(_object(doc, "performance").get("versions"), "performance.versions")
    out: dict[int, Live] = {}
    for version, entry in versions.items():
        if not (isinstance(version, str) and version.isdigit() and len(version) <= 9):
            raise ValueError(f"performance.versions has a key that is not a version number: {_show(version)}")
        where = f"performance.versions.{version}"
        entry = _object(entry, where)
        labelled = _count(entry, "labelled", where)
        found = _object(entry.get("metrics") or {}, f"{where}.metrics").get(metric)
        if found is None:
            continue
        found = _object(found, f"{where}.metrics.{metric}")
        low, value, high = (_number(found.get(k), f"{where}.metrics.{metric}.{k}") for k in ("low", "value", "high"))
        if not low <= value <= high:
            raise ValueError(f"{where}.metrics.{metric}: low <= value <= high does not hold ({low}, {value}, {high})")
        out[int(version)] = Live(metric, labelled, value, low, high)
    return out


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a JSON object, got {_show(value)}")
    return value


def _count(container: Any, key: str | int, where: str, *, most: int = MAX_COUNT) -> int:
    """container[key] as a whole number from 0 to `most` (JSON true/false are not numbers)."""
    value = container.get(key) if isinstance(container, dict) else container[key]
    field = f"{where}.{key}" if isinstance(key, str) else f"{where}[{key}]"
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= most:
        raise ValueError(f"{field} must be a whole number from 0 to {most}, got {_show(value)}")
    return value


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{field} must be a finite number, got {_show(value)}")
    return float(value)


def _show(value: Any) -> str:
    """A value for an error message, cut short (an answer may be large)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
