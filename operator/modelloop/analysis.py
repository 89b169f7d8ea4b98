"""Champion and challenger (pure): the gates that decide whether a challenger takes the traffic, the canary's
steps, and the watch after a promotion (docs/challenger.md).

The statistics, and why:
- **One look.** The gates decide once, when the analysis window has passed and the challenger has answered
  `min_requests`; before that they are computed for display only. Deciding at a fixed horizon keeps each test at
  its nominal level; looking at a growing sample every check and stopping at the first "significant" result
  would inflate false rejections several-fold. The watch after a promotion looks repeatedly, so it spends its
  alpha (Bonferroni over its planned looks).
- **A gate fails on evidence of harm beyond a tolerance**, as the DriftMonitor's performance test does: the
  challenger is rejected when it is significantly worse than the champion by more than the gate's tolerance, and
  passes otherwise. With little data nothing is significant, so `min_requests` and `min_labels` set the power.
- **Paired tests on the same rows.** Shadow copies carry the champion's prediction id, so both versions
  predicted the same rows: classifiers are compared with McNemar's exact test on the discordant pairs
  (champion right and challenger wrong, b, against the reverse, c: under "equally good" b ~ Binomial(b + c, 1/2)),
  regressors with a one-sided paired t-test on the per-row absolute-error differences. Pairing removes the
  between-row variance that two independent accuracies would carry.
- **Agreement** needs no labels: the share of identical labels (classifiers), or the Wasserstein distance
  between the two output distributions in units of the champion's spread (regressors).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

from scipy import stats

from .api.deployment import AnalysisSpec
from .meta import parse_duration

Verdict = Literal["pass", "fail", "wait", "skip"]
Decision = Literal["wait", "promote", "reject"]


_SPEC = AnalysisSpec()  # the defaults live in the API model (what `kubectl explain` shows)


@dataclass(frozen=True)
class Thresholds:
    """The analysis settings (ModelDeployment spec.rollout.analysis), with its defaults."""

    min_requests: int = _SPEC.min_requests        # challenger answers before anything is decided
    window_seconds: float = parse_duration(_SPEC.window)  # and at least this long
    min_labels: int = _SPEC.min_labels            # labelled paired rows (classifiers: discordant ones) for the test
    require_labels: bool = _SPEC.require_labels   # wait for min_labels instead of deciding without performance
    alpha: float = _SPEC.alpha                    # one-sided level of each test
    max_error_rate_increase: float = _SPEC.max_error_rate_increase
    max_latency_ratio: float = _SPEC.max_latency_ratio      # challenger p99 / champion p99
    min_agreement: float = _SPEC.min_agreement              # classifiers: identical labels
    max_output_distance: float = _SPEC.max_output_distance  # regressors: Wasserstein distance / champion output sd
    watch_seconds: float = parse_duration(_SPEC.watch_for)  # after a promotion
    watch_looks: int = 60                         # planned looks of the watch (alpha is split between them)

    @classmethod
    def from_spec(cls, spec: AnalysisSpec, watch_looks: int = 60) -> "Thresholds":
        return cls(min_requests=spec.min_requests, window_seconds=parse_duration(spec.window),
                   min_labels=spec.min_labels, require_labels=spec.require_labels, alpha=spec.alpha,
                   max_error_rate_increase=spec.max_error_rate_increase, max_latency_ratio=spec.max_latency_ratio,
                   min_agreement=spec.min_agreement, max_output_distance=spec.max_output_distance,
                   watch_seconds=parse_duration(spec.watch_for), watch_looks=watch_looks)


@dataclass(frozen=True)
class Served:
    """One version's own counters over the analysis window."""

    requests: int
    errors: int
    p99_seconds: float | None = None


@dataclass(frozen=True)
class Paired:
    """The two versions on the same prediction ids (shadow copies, or canary rows fed back)."""

    rows: int = 0                                # rows both versions predicted
    agreed: int | None = None                    # classifiers: of those, identical labels
    output_distance: float | None = None         # regressors: Wasserstein distance / champion output sd
    champion_only_right: int = 0                 # classifiers, labelled rows: b
    challenger_only_right: int = 0               # c
    loss_differences: tuple[int, float, float] | None = None  # regressors: n, mean, sd of |e_chal| - |e_champ|


# Live metrics the deployment compares (outcomes/join.py computes them with their 95% intervals), and their sense.
LIVE_METRIC = {True: "accuracy", False: "mae"}  # classifier: accuracy; regressor: mean absolute error
HIGHER_IS_BETTER = {"accuracy": True, "f1": True, "roc_auc": True, "r2": True, "mae": False, "rmse": False}
Z95 = 1.959963984540054


@dataclass(frozen=True)
class Live:
    """One version's live performance over a window, from its own rows (labels fed back): how many were labelled,
    and the metric with its 95% interval."""

    metric: str
    labelled: int
    value: float
    low: float
    high: float

    @classmethod
    def from_performance(cls, entry: dict | None, metric: str) -> "Live | None":
        """From one version's entry of a server's /performance answer (outcomes.join.live_performance)."""
        found = ((entry or {}).get("metrics") or {}).get(metric)
        if not found or found.get("value") is None:
            return None
        return cls(metric, int(entry.get("labelled") or 0), float(found["value"]), float(found["low"]),
                   float(found["high"]))


@dataclass(frozen=True)
class Gate:
    name: str
    verdict: Verdict
    value: float | None
    threshold: float | None
    message: str


@dataclass(frozen=True)
class Analysis:
    decision: Decision
    gates: list[Gate]
    message: str


# ----------------------------------------------------------------------------------------- tests

def mcnemar_worse(champion_only_right: int, challenger_only_right: int) -> float:
    """One-sided exact McNemar p-value of "the challenger is wrong more often than the champion"."""
    discordant = champion_only_right + challenger_only_right
    if discordant == 0:
        return 1.0
    return float(stats.binomtest(champion_only_right, discordant, 0.5, alternative="greater").pvalue)


def paired_worse(n: int, mean: float, sd: float) -> float:
    """One-sided paired t-test p-value of "the challenger's absolute errors are larger" from the differences'
    count, mean and standard deviation."""
    if n < 2:
        return 1.0
    if sd == 0:
        return 0.0 if mean > 0 else 1.0
    return float(stats.t.sf(mean / (sd / math.sqrt(n)), n - 1))


def rate_worse(base: Served, new: Served, tolerance: float) -> float:
    """One-sided p-value of "new's error rate exceeds base's by more than `tolerance`" (two proportions, pooled
    variance; a continuity of one half error on each side so that zero errors stay finite)."""
    if base.requests == 0 or new.requests == 0:
        return 1.0
    p_base = (base.errors + 0.5) / (base.requests + 1)
    p_new = (new.errors + 0.5) / (new.requests + 1)
    se = math.sqrt(p_base * (1 - p_base) / (base.requests + 1) + p_new * (1 - p_new) / (new.requests + 1))
    return float(stats.norm.sf((p_new - p_base - tolerance) / se))


def live_worse(base: Live, new: Live, max_drop: float = 0.0) -> float:
    """One-sided p-value of "new's live metric is worse than base's by more than `max_drop`", for two versions
    measured on different rows (a canary's, or before and after a promotion): two independent samples, the normal
    approximation, each standard error taken from its 95% interval."""
    higher = HIGHER_IS_BETTER.get(base.metric, True)
    worse_by = (base.value - new.value) if higher else (new.value - base.value)
    se = math.hypot((base.high - base.low) / (2 * Z95), (new.high - new.low) / (2 * Z95))
    if not math.isfinite(se):
        return 1.0
    if se == 0:
        return 0.0 if worse_by > max_drop else 1.0
    return float(stats.norm.sf((worse_by - max_drop) / se))


# ----------------------------------------------------------------------------------------- the gates

def gates(t: Thresholds, champion: Served, challenger: Served, paired: Paired | None, classifier: bool,
          unpaired_reason: str = "no rows can be paired", live: tuple[Live | None, Live | None] | None = None
          ) -> list[Gate]:
    """The four gates. `paired` None: nothing can be paired (no prediction records, or a canary's rows, each
    served by one version), so agreement is not tested and says why; performance is then compared on each version's
    own labelled rows when `live` (champion's, challenger's) is given, an unpaired test."""
    found = [_error_gate(t, champion, challenger), _latency_gate(t, champion, challenger)]
    if paired is None:
        agreement = Gate("agreement", "skip", None, t.min_agreement if classifier else t.max_output_distance,
                         f"not tested: {unpaired_reason}")
        if live is None:
            return found + [agreement, Gate("performance", "skip", None, t.alpha, f"not tested: {unpaired_reason}")]
        return found + [agreement, _unpaired_performance_gate(t, *live)]
    performance = _performance_gate(t, paired, classifier)
    return found + [_labels_outrank_agreement(t, _agreement_gate(t, paired, classifier), paired, classifier,
                                              performance), performance]


def _labels_outrank_agreement(t: Thresholds, agreement: Gate, paired: Paired, classifier: bool,
                              performance: Gate) -> Gate:
    """Agreement guards the label-free case: a version that answers differently from the champion is suspect until
    labels say otherwise. A retrain after drift is meant to answer differently, so when the paired test on labelled
    rows finds the challenger significantly *better*, the labels decide and low agreement does not reject it."""
    if agreement.verdict != "fail" or performance.verdict != "pass":
        return agreement
    if classifier:
        better = mcnemar_worse(paired.challenger_only_right, paired.champion_only_right)
    else:
        n, mean, sd = paired.loss_differences or (0, 0.0, 0.0)
        better = paired_worse(n, -mean, sd)
    if better >= t.alpha:
        return agreement
    return Gate("agreement", "pass", agreement.value, agreement.threshold,
                f"{agreement.message}; below the threshold, but the labelled rows show the challenger better "
                f"(p={better:.3g}): labels decide")


def _error_gate(t: Thresholds, champion: Served, challenger: Served) -> Gate:
    rate = challenger.errors / challenger.requests if challenger.requests else None
    base = champion.errors / champion.requests if champion.requests else 0.0
    if rate is None:
        return Gate("errorRate", "wait", None, t.max_error_rate_increase, "the challenger has answered nothing yet")
    p = rate_worse(champion, challenger, t.max_error_rate_increase)
    failed = p < t.alpha
    return Gate("errorRate", "fail" if failed else "pass", round(rate - base, 6), t.max_error_rate_increase,
                f"error rate {rate:.2%} against the champion's {base:.2%} (p={p:.3g} for an increase beyond "
                f"{t.max_error_rate_increase:.2%})")


def _latency_gate(t: Thresholds, champion: Served, challenger: Served) -> Gate:
    if not champion.p99_seconds or challenger.p99_seconds is None:
        return Gate("latency", "wait", None, t.max_latency_ratio, "no p99 latency of both versions yet")
    ratio = challenger.p99_seconds / champion.p99_seconds
    return Gate("latency", "fail" if ratio > t.max_latency_ratio else "pass", round(ratio, 4), t.max_latency_ratio,
                f"p99 {challenger.p99_seconds * 1000:.1f} ms against the champion's {champion.p99_seconds * 1000:.1f} ms")


def _agreement_gate(t: Thresholds, paired: Paired, classifier: bool) -> Gate:
    if paired.rows == 0:
        return Gate("agreement", "wait", None, t.min_agreement if classifier else t.max_output_distance,
                    "no row predicted by both versions yet")
    if classifier:
        share = (paired.agreed or 0) / paired.rows
        return Gate("agreement", "pass" if share >= t.min_agreement else "fail", round(share, 4), t.min_agreement,
                    f"{share:.1%} of {paired.rows} rows given the same label")
    distance = paired.output_distance if paired.output_distance is not None else math.inf
    return Gate("agreement", "pass" if distance <= t.max_output_distance else "fail", round(distance, 4),
                t.max_output_distance, f"output distributions {distance:.3g} champion sd apart on {paired.rows} rows")


def _performance_gate(t: Thresholds, paired: Paired, classifier: bool) -> Gate:
    if classifier:
        b, c = paired.champion_only_right, paired.challenger_only_right
        labelled = b + c
        if labelled < t.min_labels:
            return _too_few_labels(t, labelled, "labelled rows where the versions disagree")
        p = mcnemar_worse(b, c)
        return Gate("performance", "fail" if p < t.alpha else "pass", round(p, 6), t.alpha,
                    f"McNemar on the same rows: champion alone right {b}, challenger alone right {c}, p={p:.3g}")
    n, mean, sd = paired.loss_differences or (0, 0.0, 0.0)
    if n < t.min_labels:
        return _too_few_labels(t, n, "labelled rows")
    p = paired_worse(n, mean, sd)
    return Gate("performance", "fail" if p < t.alpha else "pass", round(p, 6), t.alpha,
                f"paired t-test on absolute errors of {n} rows: the challenger's are {mean:+.4g} larger on average, "
                f"p={p:.3g}")


def _unpaired_performance_gate(t: Thresholds, champion: Live | None, challenger: Live | None) -> Gate:
    labelled = min(champion.labelled if champion else 0, challenger.labelled if challenger else 0)
    if champion is None or challenger is None or labelled < t.min_labels:
        return _too_few_labels(t, labelled, "labelled rows of the version with fewer")
    p = live_worse(champion, challenger)
    return Gate("performance", "fail" if p < t.alpha else "pass", round(p, 6), t.alpha,
                f"live {champion.metric} on each version's own rows: champion {champion.value:.4g} "
                f"({champion.labelled} labelled), challenger {challenger.value:.4g} ({challenger.labelled}), "
                f"p={p:.3g} (unpaired)")


def _too_few_labels(t: Thresholds, count: int, what: str) -> Gate:
    if t.require_labels:
        return Gate("performance", "wait", None, t.alpha, f"{count} of {t.min_labels} {what}: waiting for labels")
    return Gate("performance", "skip", None, t.alpha, f"{count} of {t.min_labels} {what}: not tested (labels are "
                                                      f"not required)")


def analyse(t: Thresholds, champion: Served, challenger: Served, paired: Paired | None, *, classifier: bool,
            elapsed_seconds: float, unpaired_reason: str = "no rows can be paired",
            live: tuple[Live | None, Live | None] | None = None) -> Analysis:
    """The one decision of an analysis window (see the module's note on looking once)."""
    found = gates(t, champion, challenger, paired, classifier, unpaired_reason, live)
    if elapsed_seconds < t.window_seconds or challenger.requests < t.min_requests:
        return Analysis("wait", found, f"analysing: {challenger.requests} of {t.min_requests} requests, "
                                       f"{elapsed_seconds:.0f} of {t.window_seconds:.0f} s")
    failed = [g for g in found if g.verdict == "fail"]
    if failed:
        return Analysis("reject", found, "; ".join(f"{g.name}: {g.message}" for g in failed))
    waiting = [g for g in found if g.verdict == "wait"]
    if waiting:
        return Analysis("wait", found, "; ".join(f"{g.name}: {g.message}" for g in waiting))
    return Analysis("promote", found, "every gate passed: " + "; ".join(f"{g.name} {g.value}" for g in found
                                                                      if g.value is not None))


# ----------------------------------------------------------------------------------------- canary

def canary_replicas(replicas: int, weight_percent: float) -> tuple[int, int]:
    """(champion, challenger) replicas behind one Service for a challenger weight: each version keeps at least
    one pod, so the share the challenger really gets is challenger / (champion + challenger) — with 4 replicas
    the steps are 25% apart (status shows the share, not the asked weight)."""
    total = max(2, replicas)
    challenger = min(total - 1, max(1, round(total * weight_percent / 100)))
    return total - challenger, challenger


def next_step(steps: Sequence[float], current: int, decision: Decision) -> int | None:
    """The canary step after `current` (an index into steps) for a decision: the same step while waiting, the
    next after a promotion (None: the last step passed, the challenger takes everything), None after a
    rejection as well (the caller removes the challenger)."""
    if decision == "wait":
        return current
    if decision == "reject" or current + 1 >= len(steps):
        return None
    return current + 1


# ----------------------------------------------------------------------------------------- after promotion

@dataclass(frozen=True)
class Watch:
    rollback: bool
    done: bool
    message: str


def watch(t: Thresholds, previous: Served, current: Served, *, elapsed_seconds: float,
          previous_live: Live | None = None, current_live: Live | None = None) -> Watch:
    """After a promotion: roll back when the new champion's error rate is significantly above the previous one's
    (beyond the tolerance), or its live performance on its own labelled rows significantly below what the previous
    version showed on its own before the promotion (once each has min_labels), each at alpha split over the planned
    looks. Done once `watch_seconds` passed."""
    alpha = t.alpha / max(1, t.watch_looks)
    p = rate_worse(previous, current, t.max_error_rate_increase)
    if p < alpha:
        return Watch(True, False, f"error rate {current.errors}/{current.requests} against the previous version's "
                                  f"{previous.errors}/{previous.requests} (p={p:.3g} < {alpha:.3g})")
    if previous_live is not None and current_live is not None and \
            min(previous_live.labelled, current_live.labelled) >= t.min_labels:
        p = live_worse(previous_live, current_live)
        if p < alpha:
            return Watch(True, False, f"live {current_live.metric} {current_live.value:.4g} on "
                                      f"{current_live.labelled} labelled rows against the previous version's "
                                      f"{previous_live.value:.4g} on {previous_live.labelled} (p={p:.3g} < "
                                      f"{alpha:.3g})")
    if elapsed_seconds >= t.watch_seconds:
        return Watch(False, True, f"held for {t.watch_seconds:.0f} s: the previous version is released")
    return Watch(False, False, f"watching: {elapsed_seconds:.0f} of {t.watch_seconds:.0f} s, nothing worse")
