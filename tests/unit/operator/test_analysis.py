"""Champion and challenger decisions (modelloop.analysis) as pure functions, with their statistical edge cases:
few labels, ties, everything agreeing, zero errors, and the error rates of the tests themselves."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from modelloop.analysis import (Live, Paired, Served, Thresholds, analyse, canary_replicas, gates, mcnemar_worse,
                                live_worse, next_step, paired_worse, rate_worse, watch)

T = Thresholds(min_requests=500, window_seconds=600, min_labels=200)
FAST = Served(requests=2000, errors=2, p99_seconds=0.010)


def by_name(found):
    return {g.name: g for g in found}


def test_mcnemar_matches_the_exact_binomial_and_ignores_agreeing_rows():
    assert mcnemar_worse(60, 40) == pytest.approx(stats.binom.sf(59, 100, 0.5))
    assert mcnemar_worse(0, 0) == 1.0  # all agree: no evidence either way
    assert mcnemar_worse(50, 50) > 0.5  # ties are not evidence of harm
    assert mcnemar_worse(40, 60) > 0.95  # a better challenger is never "worse"


def test_paired_t_test_edge_cases():
    assert paired_worse(1, 5.0, 0.0) == 1.0  # one row decides nothing
    assert paired_worse(100, 0.0, 0.0) == 1.0 and paired_worse(100, 0.1, 0.0) == 0.0  # identical, or always worse
    assert paired_worse(400, 0.1, 1.0) == pytest.approx(stats.t.sf(2.0, 399))


def test_zero_errors_on_both_sides_is_not_a_worse_error_rate():
    assert rate_worse(Served(1000, 0), Served(1000, 0), 0.0) > 0.4
    assert rate_worse(Served(1000, 0), Served(1000, 100), 0.01) < 1e-6


def test_a_challenger_that_is_as_good_passes_every_gate_and_is_promoted_at_the_horizon():
    paired = Paired(rows=1500, agreed=1450, champion_only_right=110, challenger_only_right=105)
    early = analyse(T, FAST, Served(600, 1, 0.011), paired, classifier=True, elapsed_seconds=300)
    assert early.decision == "wait" and "300 of 600 s" in early.message  # one look, at the horizon
    done = analyse(T, FAST, Served(600, 1, 0.011), paired, classifier=True, elapsed_seconds=601)
    assert done.decision == "promote", done
    assert {g.name: g.verdict for g in done.gates} == {"errorRate": "pass", "latency": "pass", "agreement": "pass",
                                                       "performance": "pass"}


def test_a_challenger_trained_on_shuffled_labels_is_rejected_by_the_paired_test_and_agreement():
    paired = Paired(rows=1500, agreed=760, champion_only_right=420, challenger_only_right=160)
    done = analyse(T, FAST, Served(600, 0, 0.010), paired, classifier=True, elapsed_seconds=900)
    assert done.decision == "reject"
    gate = by_name(done.gates)
    assert gate["performance"].verdict == "fail" and "alone right 420" in gate["performance"].message
    assert gate["agreement"].verdict == "fail" and gate["agreement"].value == pytest.approx(760 / 1500, abs=1e-4)


def test_few_labels_skip_the_performance_gate_unless_labels_are_required():
    paired = Paired(rows=1000, agreed=990, champion_only_right=8, challenger_only_right=2)
    skipped = by_name(gates(T, FAST, Served(600, 0, 0.01), paired, classifier=True))["performance"]
    assert skipped.verdict == "skip" and "10 of 200" in skipped.message
    strict = Thresholds(min_labels=200, require_labels=True, window_seconds=0, min_requests=1)
    waiting = analyse(strict, FAST, Served(600, 0, 0.01), paired, classifier=True, elapsed_seconds=10)
    assert waiting.decision == "wait" and "waiting for labels" in waiting.message


def test_errors_and_latency_reject_on_their_own():
    paired = Paired(rows=1000, agreed=1000)
    erring = analyse(T, FAST, Served(600, 60, 0.010), paired, classifier=True, elapsed_seconds=600)
    assert erring.decision == "reject" and "errorRate" in erring.message
    slow = analyse(T, FAST, Served(600, 0, 0.200), paired, classifier=True, elapsed_seconds=600)
    assert slow.decision == "reject" and by_name(slow.gates)["latency"].value == pytest.approx(20.0)


def test_regressors_compare_output_distributions_and_paired_absolute_errors():
    close = Paired(rows=800, output_distance=0.05, loss_differences=(400, 0.001, 0.5))
    assert analyse(T, FAST, Served(600, 0, 0.01), close, classifier=False, elapsed_seconds=600).decision == "promote"
    worse = Paired(rows=800, output_distance=0.05, loss_differences=(400, 0.2, 0.5))
    verdict = analyse(T, FAST, Served(600, 0, 0.01), worse, classifier=False, elapsed_seconds=600)
    assert verdict.decision == "reject" and "paired t-test" in verdict.message
    apart = Paired(rows=800, output_distance=0.9, loss_differences=(10, 0.0, 1.0))
    gate = by_name(gates(T, FAST, Served(600, 0, 0.01), apart, classifier=False))
    assert gate["agreement"].verdict == "fail" and gate["performance"].verdict == "skip"


def test_the_paired_test_rejects_an_equal_challenger_at_its_nominal_rate_when_looked_at_once():
    """Simulated: equally good versions, one decision per window, 2,000 windows: false rejections near alpha."""
    rng = np.random.default_rng(7)
    discordant = rng.binomial(300, 0.5, 2000)  # b ~ Bin(b + c, 1/2) with 300 discordant rows per window
    rejected = np.mean([mcnemar_worse(int(b), 300 - int(b)) < T.alpha for b in discordant])
    assert rejected <= T.alpha + 0.015  # the exact test is conservative: at or below 5%
    assert rejected > 0.01  # and it can reject at all


def test_canary_weights_become_replicas_and_the_steps_advance_only_on_a_promotion():
    assert canary_replicas(4, 10) == (3, 1)  # 25%: the granularity of four pods
    assert canary_replicas(10, 50) == (5, 5)
    assert canary_replicas(1, 90) == (1, 1)  # a version never has zero pods during a canary
    assert next_step([10, 50], 0, "wait") == 0
    assert next_step([10, 50], 0, "promote") == 1
    assert next_step([10, 50], 1, "promote") is None and next_step([10, 50], 0, "reject") is None


def test_the_watch_rolls_back_on_a_significant_error_rate_or_a_performance_below_the_previous():
    t = Thresholds(watch_seconds=3600, watch_looks=60)
    steady = watch(t, Served(5000, 5), Served(1000, 2), elapsed_seconds=600)
    assert not steady.rollback and not steady.done
    erring = watch(t, Served(5000, 5), Served(1000, 80), elapsed_seconds=600)
    assert erring.rollback and "error rate 80/1000" in erring.message
    before = Live("accuracy", 800, 0.86, 0.836, 0.884)
    worse = watch(t, Served(5000, 5), Served(1000, 1), elapsed_seconds=600, previous_live=before,
                  current_live=Live("accuracy", 400, 0.73, 0.687, 0.773))
    assert worse.rollback and "live accuracy 0.73 on 400 labelled rows" in worse.message
    few = watch(t, Served(5000, 5), Served(1000, 1), elapsed_seconds=600, previous_live=before,
                current_live=Live("accuracy", 20, 0.5, 0.28, 0.72))
    assert not few.rollback, "fewer than min_labels rows decide nothing"
    close = watch(t, Served(5000, 5), Served(1000, 1), elapsed_seconds=600, previous_live=before,
                  current_live=Live("accuracy", 400, 0.84, 0.804, 0.876))
    assert not close.rollback, "a drop within the noise of two samples is not a rollback"
    done = watch(t, Served(5000, 5), Served(5000, 4), elapsed_seconds=3600)
    assert done.done and not done.rollback


def test_live_worse_knows_which_way_each_metric_is_better():
    lower_mae = Live("mae", 500, 2.0, 1.9, 2.1)
    higher_mae = Live("mae", 500, 2.6, 2.45, 2.75)
    assert live_worse(lower_mae, higher_mae) < 1e-6 and live_worse(higher_mae, lower_mae) > 0.999
    good, bad = Live("accuracy", 500, 0.9, 0.874, 0.926), Live("accuracy", 500, 0.8, 0.765, 0.835)
    assert live_worse(good, bad) < 1e-4 and live_worse(bad, good) > 0.999
    assert live_worse(good, bad, max_drop=0.2) > 0.99, "a drop within the tolerance is not worse"


def test_a_canary_is_compared_on_each_versions_own_labelled_rows_when_none_can_be_paired():
    t = Thresholds(min_requests=100, window_seconds=60, min_labels=100)
    champion, challenger = Served(1000, 0, 0.01), Served(1000, 0, 0.01)
    why = "a canary's rows are each answered by one version"
    good, bad = Live("accuracy", 400, 0.85, 0.815, 0.885), Live("accuracy", 400, 0.55, 0.501, 0.599)
    rejected = analyse(t, champion, challenger, None, classifier=True, elapsed_seconds=120, unpaired_reason=why,
                       live=(good, bad))
    gates = {g.name: g for g in rejected.gates}
    assert rejected.decision == "reject" and gates["performance"].verdict == "fail"
    assert "unpaired" in gates["performance"].message and gates["agreement"].verdict == "skip"
    passed = analyse(t, champion, challenger, None, classifier=True, elapsed_seconds=120, unpaired_reason=why,
                     live=(good, Live("accuracy", 400, 0.86, 0.826, 0.894)))
    assert passed.decision == "promote"
    waiting = analyse(t, champion, challenger, None, classifier=True, elapsed_seconds=120, unpaired_reason=why,
                      live=(good, Live("accuracy", 40, 0.2, 0.08, 0.32)))
    assert {g.name: g for g in waiting.gates}["performance"].verdict in ("wait", "skip"), \
        "forty labels decide nothing"
    unlabelled = analyse(t, champion, challenger, None, classifier=True, elapsed_seconds=120, unpaired_reason=why)
    assert {g.name: g for g in unlabelled.gates}["performance"].verdict == "skip"


def test_labels_that_show_the_challenger_better_outrank_low_agreement_and_nothing_else_does():
    """A retrain after concept drift answers differently by design (the demo's measured 50% agreement): when the
    paired test finds it significantly better, low agreement does not reject it; when labels are few, or show no
    difference, it still does."""
    from modelloop.analysis import Paired, Served, Thresholds, analyse

    t = Thresholds(min_requests=10, window_seconds=0, min_labels=50)
    served = Served(1000, 0, 0.01)
    better = Paired(rows=1000, agreed=500, champion_only_right=40, challenger_only_right=400)
    decided = analyse(t, served, served, better, classifier=True, elapsed_seconds=1)
    agreement = next(g for g in decided.gates if g.name == "agreement")
    assert decided.decision == "promote" and agreement.verdict == "pass" and "labels decide" in agreement.message
    for paired in (Paired(rows=1000, agreed=500, champion_only_right=10, challenger_only_right=12),   # few labels
                   Paired(rows=1000, agreed=500, champion_only_right=200, challenger_only_right=210)):  # no better
        assert analyse(t, served, served, paired, classifier=True, elapsed_seconds=1).decision == "reject"
