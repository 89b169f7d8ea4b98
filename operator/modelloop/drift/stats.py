"""Drift statistics: from bin counts (sketches) and exact ones from raw values.

Pure functions of arrays; `modelloop.drift.detect` chooses among them and decides. Formulas, the
binning tolerance and the reasons for each choice are in docs/drift.md.

Conventions: `ref` / `cur` are counts of the reference and of the current window over the same bins
(missing values excluded); distributions are the counts divided by their total.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy import special
from scipy.stats import distributions, fisher_exact

from .grid import CELLS, MIN_VALUES, bin_counts, cells_of, quantiles

# Bins of PSI and Jensen-Shannon on numeric features: 10 groups of equal reference mass (deciles).
# Finer bins bias both upwards on small windows (about (bins - 1) / n under no drift).
NUMERIC_GROUPS = 10
# Proportions below this count as this in PSI, which is infinite on an empty bin otherwise.
PSI_FLOOR = 1e-4
# IQR of a normal distribution in standard deviations: IQR / 1.349 estimates the standard deviation
# robustly, so the normalised Wasserstein distance of a shifted normal is the shift in sigmas.
IQR_PER_SIGMA = 2.0 * special.ndtri(0.75)
# ks_2samp computes exact p-values up to this many values in the larger sample; so do we.
KS_EXACT_MAX = 10_000


def _proportions(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    return counts / total if total > 0 else counts


# ---------------------------------------------------------------------------------------------------
# Divergences between two histograms over the same bins.

def psi(ref: np.ndarray, cur: np.ndarray, floor: float = PSI_FLOOR) -> float:
    """Population stability index: sum((q - p) * ln(q / p)), proportions floored at `floor`."""
    p = np.maximum(_proportions(ref), floor)
    q = np.maximum(_proportions(cur), floor)
    return float(np.sum((q - p) * np.log(q / p)))


def jensenshannon(ref: np.ndarray, cur: np.ndarray) -> float:
    """Jensen-Shannon distance in base 2 (0 identical .. 1 disjoint), as scipy's jensenshannon(base=2)."""
    p, q = _proportions(ref), _proportions(cur)
    m = (p + q) / 2.0
    divergence = (np.sum(special.rel_entr(p, m)) + np.sum(special.rel_entr(q, m))) / 2.0
    return float(math.sqrt(max(divergence, 0.0) / math.log(2.0)))


def chi2_test(ref: np.ndarray, cur: np.ndarray) -> tuple[float, float, float]:
    """(statistic, p-value, Cramer's V) of the chi-squared test of homogeneity of the 2 x bins table,
    bins empty in both dropped; as scipy's chi2_contingency(correction=False)."""
    table = np.vstack([ref, cur]).astype(np.float64)
    table = table[:, table.sum(axis=0) > 0]
    total = table.sum()
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return 0.0, 1.0, 0.0
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / total
    statistic = float(np.sum((table - expected) ** 2 / expected))
    p_value = float(distributions.chi2.sf(statistic, table.shape[1] - 1))
    return statistic, p_value, math.sqrt(statistic / total)  # V = sqrt(chi2 / (N * (min(2, bins) - 1)))


def missing_rate_test(missing_ref: int, rows_ref: int, missing_cur: int, rows_cur: int) -> float:
    """Two-sided p-value of Fisher's exact test that the share of missing values is the same in both.

    Exact at any size (the chi-squared approximation is not with a handful of missing values on one
    side, the usual case when the reference has none), and well under a millisecond at 10^7 rows."""
    table = [[rows_ref - missing_ref, missing_ref], [rows_cur - missing_cur, missing_cur]]
    return float(fisher_exact(table).pvalue)


def cohens_h(share_ref: float, share_cur: float) -> float:
    """Cohen's h of two proportions: 2 asin(sqrt(cur)) - 2 asin(sqrt(ref)), -pi..pi.

    The arcsine stabilises the variance of a proportion, so an h of one size is equally detectable at
    any reference share: near 0% (or 100%) a small absolute change counts as much as a large one at 50%."""
    return 2.0 * (math.asin(math.sqrt(share_cur)) - math.asin(math.sqrt(share_ref)))


def group_bins(ref: np.ndarray, groups: int = NUMERIC_GROUPS) -> np.ndarray:
    """Group number of each bin, consecutive bins of about 1/groups of the reference mass per group
    (reference-quantile bins of a sketch coarsen to deciles)."""
    ref = np.asarray(ref, dtype=np.float64)
    total = ref.sum()
    if total <= 0:
        return np.zeros(ref.size, dtype=np.intp)
    middle = (np.cumsum(ref) - ref / 2.0) / total
    return np.minimum((middle * groups).astype(np.intp), groups - 1)


def regroup(counts: np.ndarray, group: np.ndarray) -> np.ndarray:
    return np.bincount(group, weights=np.asarray(counts, dtype=np.float64), minlength=int(group.max(initial=0)) + 1)


# ---------------------------------------------------------------------------------------------------
# Kolmogorov-Smirnov and Wasserstein on numeric bins.

def ks_pvalue(d: float, n: int, m: int) -> float:
    """Asymptotic two-sample KS p-value of statistic `d` with effective size n*m/(n+m), as ks_2samp(method="asymp")."""
    if n <= 0 or m <= 0 or d <= 0:
        return 1.0
    return float(np.clip(distributions.kstwo.sf(d, np.round(n * m / (n + m))), 0.0, 1.0))


def _cdf_gaps(ref: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """F_ref - F_cur at each interior edge (the mass strictly below it)."""
    return (np.cumsum(_proportions(ref))[:-1] - np.cumsum(_proportions(cur))[:-1])


def ks_binned(ref: np.ndarray, cur: np.ndarray) -> tuple[float, float]:
    """(statistic, p-value): the largest CDF gap over the edges; the exact statistic is at most one
    bin's mass larger (docs/drift.md, "Binning tolerance")."""
    gaps = _cdf_gaps(ref, cur)
    d = float(np.abs(gaps).max(initial=0.0))
    return d, ks_pvalue(d, int(np.sum(ref)), int(np.sum(cur)))


def wasserstein_binned(edges: np.ndarray, ref: np.ndarray, cur: np.ndarray) -> float:
    """Integral of |F_ref - F_cur| between the outer edges, both CDFs linear within each bin (values
    spread uniformly); mass outside the outer edges adds nothing (docs/drift.md)."""
    edges = np.asarray(edges, dtype=np.float64)
    if edges.size < 2:
        return 0.0
    gaps = _cdf_gaps(ref, cur)
    a, b, width = gaps[:-1], gaps[1:], np.diff(edges)
    same_sign = a * b >= 0
    span = np.abs(a) + np.abs(b)
    with np.errstate(invalid="ignore", divide="ignore"):
        crossing = np.where(span > 0, (a * a + b * b) / (2.0 * span), 0.0)  # exact |linear| integral
    return float(np.sum(width * np.where(same_sign, span / 2.0, crossing)))


def binned_scale(edges: np.ndarray, ref: np.ndarray) -> float:
    """The reference's spread from its bins: IQR / 1.349 (the CDF interpolated between edges), else
    the standard deviation with values at the bin middles (outer bins at the outer edges); 0 if none."""
    edges = np.asarray(edges, dtype=np.float64)
    p = _proportions(ref)
    if edges.size < 2 or p.sum() == 0:
        return 0.0
    cdf = np.cumsum(p)[:-1]
    q1, q3 = np.interp([0.25, 0.75], cdf, edges)
    if q3 > q1:
        return float((q3 - q1) / IQR_PER_SIGMA)
    values = np.concatenate([[edges[0]], (edges[:-1] + edges[1:]) / 2.0, [edges[-1]]])
    mean = np.sum(p * values)
    return float(math.sqrt(max(np.sum(p * (values - mean) ** 2), 0.0)))


# ---------------------------------------------------------------------------------------------------
# Exact statistics on raw values.

def values_scale(x: np.ndarray) -> float:
    """IQR / 1.349 of finite values, else their standard deviation; 0 when constant or empty."""
    x = x[np.isfinite(x)]
    if x.size == 0:
        return 0.0
    q1, q3 = quantiles(x, np.array([0.25, 0.75]))
    if q3 > q1:
        return float((q3 - q1) / IQR_PER_SIGMA)
    return float(np.std(x))


def _merged_cdfs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For the sorted union of sorted `a` and `b`: F_a - F_b after each value, and the width to the
    next value (0 inside a run of ties, so only the last of a run counts)."""
    n, m = a.size, b.size
    merged = np.empty(n + m)
    from_a = np.zeros(n + m, dtype=bool)
    at_a = np.arange(n) + np.searchsorted(b, a, side="left")
    at_b = np.arange(m) + np.searchsorted(a, b, side="right")
    merged[at_a] = a
    merged[at_b] = b
    from_a[at_a] = True
    seen_a = np.cumsum(from_a)
    gap = seen_a / n - (np.arange(1, n + m + 1) - seen_a) / m
    width = np.empty(n + m)
    np.subtract(merged[1:], merged[:-1], out=width[:-1])
    width[-1] = 0.0
    return gap, width


def _sorted_ks_wasserstein(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(D, W) from one sort of each sample."""
    gap, width = _merged_cdfs(np.sort(a), np.sort(b))
    return float(np.abs(gap[width > 0]).max(initial=0.0)), float(np.dot(np.abs(gap), width))


def _grid_ks_wasserstein(a: np.ndarray, b: np.ndarray) -> tuple[float, float] | None:
    """(D, W) of large samples without sorting them; None when the values span no finite range.

    Both samples are counted (and summed) over a uniform grid of cells. Between cells the CDF gap
    F_a - F_b is known exactly; inside a cell it can only reach as far as its counts allow.
    A cell where neither the KS supremum can hide nor the gap can change sign needs no order: its
    Wasserstein integral follows from its counts and sums. Only the values of the few other cells are
    sorted (cells holding one repeated value need no sort either). The grid map is monotone, so
    sorting values also sorts them by cell, and D is exact; W is exact up to rounding.
    """
    n, m = a.size, b.size
    lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
    if lo == hi:
        return 0.0, 0.0
    ca, cb = cells_of(a, lo, hi), cells_of(b, lo, hi)
    if ca is None or cb is None:
        return None
    size = CELLS + 2
    ha, hb = np.bincount(ca, minlength=size), np.bincount(cb, minlength=size)
    below_a, below_b = np.cumsum(ha) - ha, np.cumsum(hb) - hb  # values in lower cells
    before = below_a / n - below_b / m  # the gap before the cell's first value
    after = (below_a + ha) / n - (below_b + hb) / m
    # Inside a cell the gap walks from `before` to `after` in steps of +1/n (a value of a) and -1/m.
    highest = np.minimum(before + ha / n, after + hb / m)
    lowest = np.maximum(before - hb / m, after - ha / n)
    d_between = float(np.abs(after).max())
    inside = (np.maximum(highest, -lowest) > d_between) | ((lowest < 0) & (highest > 0))
    # Sums and positions are offsets from lo, which keeps `count * end - sum` accurate for values far from 0.
    # Only values of `inside` cells are gathered; those of cells holding one repeated value are then dropped.
    sa = np.bincount(ca, weights=a - lo, minlength=size)
    sb = np.bincount(cb, weights=b - lo, minlength=size)
    pick_a, pick_b = inside[ca], inside[cb]
    values = np.concatenate([a[pick_a], b[pick_b]])
    cells = np.concatenate([ca[pick_a], cb[pick_b]])
    from_a = np.arange(values.size) < np.count_nonzero(pick_a)
    single = np.zeros(size, dtype=bool)
    if values.size > MIN_VALUES:  # many values to sort: some cells may hold one repeated value
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = (sa + sb) / (ha + hb)
        single[inside] = np.bincount(cells, weights=(values - lo) != mean[cells], minlength=size)[inside] == 0
        keep = ~single[cells]
        values, cells, from_a = values[keep], cells[keep], from_a[keep]
    width = (hi - lo) / CELLS
    start = (np.arange(size) - 1.0) * width
    end = np.minimum(start + width, hi - lo)
    start[0], end[0], start[-1], end[-1] = 0.0, 0.0, hi - lo, hi - lo  # cell 0 is empty, cell C+1 holds hi
    # A cell of one repeated value v: |before| up to v, |after| from v. Any other cell of one sign: the
    # integral of F_a - F_b is before * width + sum(end - x) / n over a's values - the same over b's.
    value = np.where(single, (sa + sb) / np.maximum(ha + hb, 1), 0.0)
    pieces = np.where(single, np.abs(before) * (value - start) + np.abs(after) * (end - value),
                      np.abs(before * (end - start) + (ha * end - sa) / n - (hb * end - sb) / m))
    exact = inside & ~single
    if not exact.any():
        return d_between, float(pieces[1:-1].sum())
    d_sorted, sorted_part = _sorted_cells(values, lo, cells, from_a, exact, n, m,
                                          _Cells(ha, hb, below_a, below_b, before, start, end))
    return max(d_between, d_sorted), float(pieces[1:-1][~exact[1:-1]].sum() + sorted_part)


class _Cells(NamedTuple):
    """Per grid cell: the counts of a and b in it and below it, the CDF gap before its first value, and its
    bounds (offsets from the lowest value)."""

    count_a: np.ndarray
    count_b: np.ndarray
    below_a: np.ndarray
    below_b: np.ndarray
    before: np.ndarray
    start: np.ndarray
    end: np.ndarray


def _sorted_cells(values: np.ndarray, lo: float, cells: np.ndarray, from_a: np.ndarray, exact: np.ndarray, n: int,
                  m: int, grid: _Cells) -> tuple[float, float]:
    """(the largest |F_a - F_b| at the values of the `exact` cells, the Wasserstein integral over those cells), from
    one sort of their values (with their `cells`, and whether each is a's; `lo` the lowest value of both)."""
    order = np.argsort(values, kind="stable")
    cells, from_a = cells[order], from_a[order]
    values = values[order]
    picked_a, picked_b = np.where(exact, grid.count_a, 0), np.where(exact, grid.count_b, 0)
    # Values up to each one: those of lower cells, plus those of its cell up to it.
    upto_a = grid.below_a[cells] + np.cumsum(from_a) - (np.cumsum(picked_a) - picked_a)[cells]
    upto_b = grid.below_b[cells] + np.cumsum(~from_a) - (np.cumsum(picked_b) - picked_b)[cells]
    gap = upto_a / n - upto_b / m
    last_of_run = np.ones(values.size, dtype=bool)
    last_of_run[:-1] = values[1:] != values[:-1]
    d = float(np.abs(gap[last_of_run]).max())
    offsets = values - lo
    last_in_cell = np.ones(offsets.size, dtype=bool)
    last_in_cell[:-1] = cells[1:] != cells[:-1]
    first_in_cell = np.ones(offsets.size, dtype=bool)
    first_in_cell[1:] = last_in_cell[:-1]
    following = np.empty(offsets.size)
    following[:-1] = offsets[1:]
    following[last_in_cell] = grid.end[cells[last_in_cell]]
    firsts = cells[first_in_cell]
    return d, (np.abs(gap) @ (following - offsets)
               + np.abs(grid.before[firsts]) @ (offsets[first_in_cell] - grid.start[firsts]))


def ks_wasserstein_exact(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """(KS statistic, KS p-value, Wasserstein-1 distance) of two samples of finite values.

    Equal to scipy's ks_2samp (method "auto": exact p-value up to 10,000 values, asymptotic beyond)
    and wasserstein_distance. Large samples go through a grid instead of being sorted.
    """
    n, m = a.size, b.size
    if n == 0 or m == 0:
        return 0.0, 1.0, 0.0
    if max(n, m) <= KS_EXACT_MAX:
        from scipy.stats import ks_2samp
        d, w = _sorted_ks_wasserstein(a, b)
        return d, float(ks_2samp(a, b).pvalue), w
    d, w = _grid_ks_wasserstein(a, b) or _sorted_ks_wasserstein(a, b)
    return d, ks_pvalue(d, n, m), w


def counts_over(edges: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Counts of non-NaN `x` over the bins of `edges` (the sketch's bins)."""
    edges = np.asarray(edges, dtype=np.float64)
    if edges.size == 0:
        return np.array([x.size], dtype=np.int64)
    return bin_counts(x, edges)


def decile_edges(x: np.ndarray, groups: int = NUMERIC_GROUPS) -> np.ndarray:
    """Unique reference quantiles splitting finite `x` into `groups` bins of equal mass."""
    x = x[np.isfinite(x)]
    if x.size == 0:
        return np.empty(0)
    return np.unique(quantiles(x, np.linspace(0.0, 1.0, groups + 1)[1:-1]))


# ---------------------------------------------------------------------------------------------------
# Multiple testing.

CORRECTIONS = ("fdr_bh", "bonferroni", "none")


def adjust_pvalues(p_values: np.ndarray, method: str = "fdr_bh") -> np.ndarray:
    """p-values adjusted for testing them together: Benjamini-Hochberg (fdr_bh), Bonferroni, or none."""
    p = np.asarray(p_values, dtype=np.float64)
    if p.size == 0 or method == "none":
        return p.copy()
    if method == "bonferroni":
        return np.minimum(p * p.size, 1.0)
    if method != "fdr_bh":
        raise ValueError(f"correction {method!r} is not supported; use one of {list(CORRECTIONS)}")
    order = np.argsort(p)
    scaled = p[order] * p.size / np.arange(1, p.size + 1)
    adjusted = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    out = np.empty_like(adjusted)
    out[order] = adjusted
    return out
