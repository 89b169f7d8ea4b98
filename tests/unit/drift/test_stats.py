"""Drift statistics agree with scipy on the same data, within the tolerance the binning implies."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon as scipy_jensenshannon
from scipy.stats import chi2_contingency, fisher_exact, ks_2samp, wasserstein_distance

from modelloop.drift import stats
from modelloop.drift.sketch import build_reference, count_into, empty_like

BINS = 100


def _binned(x: np.ndarray, y: np.ndarray, bins: int = BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ref = build_reference({"x": x}, bins=bins)
    cur = count_into(empty_like(ref), {"x": y})
    return (np.array(ref["features"][0]["edges"]), np.array(ref["features"][0]["counts"]),
            np.array(cur["features"][0]["counts"]))


@pytest.fixture(scope="module")
def shifted() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    return rng.standard_normal(40_000), rng.standard_normal(30_000) * 1.1 + 0.3


def test_binned_ks_statistic_is_within_one_bin_of_ks_2samp(shifted):
    x, y = shifted
    edges, ref, cur = _binned(x, y)
    d, p_value = stats.ks_binned(ref, cur)
    exact = ks_2samp(x, y)
    # The binned statistic is the CDF gap at the edges only: never above the exact one, and below it by at
    # most the mass of one bin of either sample (1/BINS of the reference; the current's bins here < 2%).
    largest_bin = max(ref.max() / ref.sum(), cur.max() / cur.sum())
    assert exact.statistic - largest_bin <= d <= exact.statistic + 1e-12
    assert p_value == pytest.approx(stats.ks_pvalue(d, x.size, y.size))


def test_ks_pvalue_is_ks_2samp_asymptotic_with_effective_n():
    rng = np.random.default_rng(12)
    x, y = rng.standard_normal(20_000), rng.standard_normal(15_000) + 0.02
    exact = ks_2samp(x, y, method="asymp")
    assert stats.ks_pvalue(exact.statistic, x.size, y.size) == pytest.approx(exact.pvalue, rel=1e-9)
    assert stats.ks_pvalue(0.0, 10, 10) == 1.0 and stats.ks_pvalue(0.5, 0, 10) == 1.0


def test_binned_wasserstein_is_within_five_percent_of_scipy(shifted):
    x, y = shifted
    edges, ref, cur = _binned(x, y)
    # Linear CDFs inside each bin and nothing beyond the outer edges (1% of the reference each side):
    # the binned distance undershoots by the tails' share of the integral, here about 2-3%.
    exact = wasserstein_distance(x, y)
    assert stats.wasserstein_binned(edges, ref, cur) == pytest.approx(exact, rel=0.05)


def test_binned_wasserstein_of_identical_counts_is_zero_and_crossings_integrate_exactly():
    edges = np.array([0.0, 1.0, 2.0])
    assert stats.wasserstein_binned(edges, np.array([1, 1, 1, 1]), np.array([2, 2, 2, 2])) == 0.0
    # CDF gaps at the edges +1/4, -1/4, 0: |linear| integrates to (a^2 + b^2) / (2(|a| + |b|)) = 1/8 over
    # the crossing bin [0, 1] (a trapezoid of |a|, |b| would say 1/4) and to 1/8 over [1, 2].
    assert stats.wasserstein_binned(edges, np.array([1, 1, 1, 1]), np.array([0, 3, 0, 1])) == pytest.approx(1 / 4)


def test_binned_scale_is_the_standard_deviation_of_a_normal(shifted):
    x, _ = shifted
    edges, ref, _ = _binned(x, x)
    assert stats.binned_scale(edges, ref) == pytest.approx(np.std(x), rel=0.03)
    assert stats.values_scale(x) == pytest.approx(np.std(x), rel=0.03)
    assert stats.binned_scale(np.array([5.0]), np.array([0, 10])) == 0.0


def test_binned_scale_falls_back_to_the_standard_deviation_when_the_iqr_is_zero():
    x = np.array([0.0] * 80 + [1.0] * 20)
    edges, ref, _ = _binned(x, x, bins=10)
    assert stats.binned_scale(edges, ref) > 0


def test_chi2_matches_chi2_contingency_exactly():
    rng = np.random.default_rng(13)
    ref, cur = rng.integers(0, 500, 8), rng.integers(0, 500, 8)
    ref[3] = cur[3] = 0  # empty in both: dropped, as scipy requires
    statistic, p_value, v = stats.chi2_test(ref, cur)
    table = np.vstack([ref, cur])
    expected = chi2_contingency(table[:, table.sum(axis=0) > 0], correction=False)
    assert statistic == pytest.approx(expected.statistic, rel=1e-12)
    assert p_value == pytest.approx(expected.pvalue, rel=1e-9)
    assert v == pytest.approx(np.sqrt(expected.statistic / table.sum()))


def test_chi2_of_one_category_or_an_empty_side_is_no_evidence():
    assert stats.chi2_test(np.array([5, 0]), np.array([7, 0]))[1] == 1.0
    assert stats.chi2_test(np.array([5, 3]), np.array([0, 0]))[1] == 1.0


@pytest.mark.parametrize("table", [[[100_000, 0], [95_100, 4_900]], [[480, 20], [470, 30]], [[20, 0], [17, 3]],
                                   [[0, 10], [5, 5]]])
def test_missing_rate_test_is_fishers_exact_test(table):
    (values_ref, missing_ref), (values_cur, missing_cur) = table
    p_value = stats.missing_rate_test(missing_ref, values_ref + missing_ref, missing_cur, values_cur + missing_cur)
    assert p_value == pytest.approx(fisher_exact(table).pvalue, rel=1e-12)


def test_cohens_h_weighs_a_change_by_the_references_share():
    assert stats.cohens_h(0.0, 1.0) == pytest.approx(np.pi) and stats.cohens_h(0.3, 0.3) == 0.0
    assert stats.cohens_h(0.05, 0.0) == pytest.approx(-stats.cohens_h(0.0, 0.05))
    # The same 5 points: large from 0%, smallest at 50%, where h = 0.1 is exactly 5 points.
    assert stats.cohens_h(0.0, 0.05) > stats.cohens_h(0.2, 0.25) > stats.cohens_h(0.5, 0.55) == pytest.approx(0.1, abs=1e-3)


def test_jensenshannon_matches_scipy_in_base_2():
    rng = np.random.default_rng(14)
    p, q = rng.integers(0, 100, 12), rng.integers(0, 100, 12)
    p[0] = 0
    assert stats.jensenshannon(p, q) == pytest.approx(scipy_jensenshannon(p, q, base=2), rel=1e-9)
    assert stats.jensenshannon(p, p) == pytest.approx(0.0, abs=1e-7)
    assert stats.jensenshannon(np.array([1, 0]), np.array([0, 1])) == pytest.approx(1.0)


def test_psi_is_the_symmetric_divergence_with_floored_proportions():
    assert stats.psi(np.array([50, 50]), np.array([50, 50])) == 0.0
    p, q = np.array([0.5, 0.5]), np.array([0.6, 0.4])
    assert stats.psi(p * 100, q * 100) == pytest.approx(np.sum((q - p) * np.log(q / p)))
    assert np.isfinite(stats.psi(np.array([10, 0]), np.array([5, 5])))


def test_numeric_psi_and_jensenshannon_use_deciles_of_the_reference(shifted):
    x, _ = shifted
    _, ref, _ = _binned(x, x)
    group = stats.group_bins(ref)
    assert group.max() == 9 and np.all(np.diff(group) >= 0)
    assert stats.regroup(ref, group) == pytest.approx(np.full(10, x.size / 10), rel=0.01)


def _samples(kind: str, n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(n + m + len(kind))
    if kind == "ties":
        return rng.integers(0, 20, n).astype(float), rng.integers(1, 22, m).astype(float)
    if kind == "same":  # no drift: the CDF gap crosses zero many times
        return rng.standard_normal(n), rng.standard_normal(m)
    if kind == "heavy":  # most values in a few grid cells, a few far away
        return rng.standard_cauchy(n), rng.standard_cauchy(m) + 0.5
    if kind == "offset":  # large values, small spread
        return 1.7e9 + rng.standard_normal(n), 1.7e9 + rng.standard_normal(m) + 0.2
    if kind == "mixed":  # a point mass inside a continuous part
        x, y = rng.standard_normal(n), rng.standard_normal(m) + 0.1
        x[: n // 3], y[: m // 4] = 0.0, 0.0
        return x, y
    return rng.standard_normal(n), rng.standard_normal(m) * 0.9 + 0.1


@pytest.mark.parametrize("n, m, kind", [
    (300, 200, "normal"), (5_000, 8_000, "ties"),  # small: sorted, exact p-value
    (30_000, 20_000, "normal"), (25_000, 25_000, "ties"), (40_000, 40_000, "same"), (30_000, 12_000, "heavy"),
    (20_000, 20_000, "offset"), (30_000, 25_000, "mixed"),  # large: through the grid, asymptotic p-value
])
def test_exact_ks_and_wasserstein_equal_scipy(n, m, kind):
    x, y = _samples(kind, n, m)
    d, p_value, w = stats.ks_wasserstein_exact(x, y)
    expected = ks_2samp(x, y)
    assert d == pytest.approx(expected.statistic, abs=1e-12)
    assert p_value == pytest.approx(expected.pvalue, rel=1e-6, abs=1e-300)
    assert w == pytest.approx(wasserstein_distance(x, y), rel=1e-9)


def test_benjamini_hochberg_and_bonferroni_adjustments():
    p = np.array([0.01, 0.04, 0.03, 0.005, 0.5])
    # BH by hand: sorted 0.005 0.01 0.03 0.04 0.5 -> *5/rank = 0.025 0.025 0.05 0.05 0.5, monotone from the top.
    assert stats.adjust_pvalues(p, "fdr_bh") == pytest.approx([0.025, 0.05, 0.05, 0.025, 0.5])
    assert stats.adjust_pvalues(p, "bonferroni") == pytest.approx([0.05, 0.2, 0.15, 0.025, 1.0])
    assert stats.adjust_pvalues(p, "none") == pytest.approx(p)
    assert stats.adjust_pvalues(np.array([]), "fdr_bh").size == 0
    with pytest.raises(ValueError, match="holm"):
        stats.adjust_pvalues(p, "holm")
