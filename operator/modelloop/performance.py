"""DriftMonitor decisions on outcomes (pure): which live metric decides, whether the served version's live
performance dropped significantly below its hold-out value, and the status entries that say so.

The test: with at least spec.performance.minLabels labelled predictions of the served version in the window,
performance dropped when the whole 95% interval of the live value is worse than hold-out minus maxDrop, i.e.
a one-sided test at 2.5% of "live is worse than hold-out by more than maxDrop". The intervals come from the
join (modelloop.outcomes.join): they widen with few labels, so a handful of unlucky labels decides nothing.
"""
from __future__ import annotations

from dataclasses import dataclass

from .api.drift import LIVE_METRICS, PerformanceSpec

HIGHER_IS_BETTER = {"accuracy": True, "f1": True, "precision": True, "recall": True, "roc_auc": True, "r2": True,
                    "mae": False, "rmse": False}


def deciding_metric(spec: PerformanceSpec, training_metric: str | None, classifier: bool) -> str:
    if spec.metric:
        return spec.metric
    if training_metric in LIVE_METRICS:
        return training_metric
    return "accuracy" if classifier else "rmse"


@dataclass(frozen=True)
class Verdict:
    entries: list[dict]     # status.performance, the served version first
    decided: bool           # enough labels of the served version to decide
    dropped: bool           # a significant drop (decided and below the tolerance)
    message: str


def assess(spec: PerformanceSpec, live: dict[str, dict], served: int, holdout: dict[str, float], metric: str
           ) -> Verdict:
    """`live`: the servers' answer, version (text) -> {labelled, metrics: {name: {value, low, high}}, and for the
    served version, without labels, estimated: {rows, metrics: {accuracy: ...}}}. The live metric decides once
    the served version has minLabels labels; before that, the label-free accuracy estimate does (against the
    hold-out accuracy), once it covers minLabels predictions."""
    entries, verdict, estimated = [], None, None
    for version in sorted(live, key=lambda v: (int(v) != served, -int(v))):
        found = live[version]
        # The hold-out values at hand are the served version's; an earlier version is shown without one.
        entry = _entry(spec, int(version), "live", metric, int(found.get("labelled") or 0),
                       (found.get("metrics") or {}).get(metric), holdout.get(metric) if int(version) == served else None)
        entries.append(entry)
        if int(version) == served:
            verdict = entry
            guess = found.get("estimated") or {}
            if (guess.get("metrics") or {}).get("accuracy"):
                estimated = _entry(spec, served, "estimated", "accuracy", int(guess.get("rows") or 0),
                                   guess["metrics"]["accuracy"], holdout.get("accuracy"))
                entries.insert(1, estimated)
    for deciding in (verdict, estimated):
        if deciding is not None and "dropped" in deciding:
            return Verdict(entries, True, bool(deciding["dropped"]), _message(spec, deciding, served))
    labelled = verdict["labelled"] if verdict else 0
    why = f"{labelled} of {spec.min_labels} labelled predictions of version {served} in the window"
    if verdict and verdict.get("value") is not None and verdict.get("holdout") is None:
        why = f"version {served} has no hold-out {metric}"
    return Verdict(entries, False, False, f"live performance undecided: {why}")


def _entry(spec: PerformanceSpec, version: int, source: str, metric: str, count: int, estimate: dict | None,
           reference: float | None) -> dict:
    entry = {"version": version, "metric": metric, "labelled": count, "source": source}
    if reference is not None:
        entry["holdout"] = round(float(reference), 6)
    if estimate:
        entry.update(value=round(estimate["value"], 6), low=round(estimate["low"], 6), high=round(estimate["high"], 6))
    if estimate and reference is not None and count >= spec.min_labels:
        higher = HIGHER_IS_BETTER[metric]
        best_plausible = estimate["high"] if higher else estimate["low"]
        entry["dropped"] = (best_plausible < reference - spec.max_drop if higher
                            else best_plausible > reference + spec.max_drop)
    entry["display"] = _display(entry)
    return entry


def _message(spec: PerformanceSpec, entry: dict, served: int) -> str:
    higher = HIGHER_IS_BETTER[entry["metric"]]
    how = "live" if entry["source"] == "live" else "estimated (no labels: calibrated confidence)"
    count = f"{entry['labelled']} labels" if entry["source"] == "live" else f"{entry['labelled']} predictions"
    verdict = f"significantly {'below' if higher else 'above'} it" if entry["dropped"] else "no significant drop"
    return (f"{how} {entry['metric']} of version {served} is {entry['value']:.3f} (95% {entry['low']:.3f}-"
            f"{entry['high']:.3f}) on {count}; hold-out {entry['holdout']:.3f}, tolerance {spec.max_drop:g}: "
            f"{verdict}")


def _display(entry: dict) -> str:
    value = f"{entry['value']:.3g}" if entry.get("value") is not None else "-"
    holdout = f" (hold-out {entry['holdout']:.3g})" if entry.get("holdout") is not None else ""
    count = f"{entry['labelled']} labels" if entry["source"] == "live" else f"{entry['labelled']} rows, estimated"
    return f"v{entry['version']} {entry['metric']} {value}{holdout}, {count}"[:128]
