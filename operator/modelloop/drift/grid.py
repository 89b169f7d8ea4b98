"""Fast exact kernels on a uniform grid: bin counts over fixed edges and quantiles of large arrays.

np.searchsorted costs a mispredicted branch per level of its binary search (~40 ns a value for 100
bins) and np.quantile a partition of the whole array. Large arrays here first go through a fine
uniform grid of cells: a cell that holds no edge lies inside one bin, so only values in the few cells
that hold an edge are searched; a quantile needs only the values of the cell that holds its order
statistic. The grid map is monotone in floating point (IEEE subtraction, multiplication by a positive
constant and truncation all are), so sorting values also sorts them by cell: the counts are exactly
searchsorted's, the quantiles np.quantile's (method "linear", same interpolation formula).
`modelloop.drift.stats` uses the same grid for exact KS and Wasserstein statistics.
"""
from __future__ import annotations

import numpy as np

# Below this many values the plain numpy calls are as fast.
MIN_VALUES = 4096
# 65,536 cells: ~0.5 MiB of per-cell arrays; a 100-edge binning searches ~0.3% of normal values.
CELLS = 1 << 16


def cells_of(values: np.ndarray, lo: float, hi: float) -> np.ndarray | None:
    """Cell of each (non-NaN) value: 0 below `lo`, 1..CELLS over [lo, hi), CELLS + 1 from `hi`."""
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        scale = CELLS / (hi - lo)
    if not np.isfinite(scale) or scale <= 0:
        return None
    cell = values - lo
    cell *= scale
    cell += 1.0
    np.clip(cell, 0.0, CELLS + 1.0, out=cell)
    return cell.astype(np.intp)


def bin_counts(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """np.bincount(np.searchsorted(edges, x, side="right"), minlength=len(edges) + 1) of non-NaN `x`."""
    nbins = edges.size + 1
    cell = cells_of(x, edges[0], edges[-1]) if x.size >= MIN_VALUES and edges.size >= 2 else None
    if cell is None:
        return np.bincount(np.searchsorted(edges, x, side="right"), minlength=nbins)
    per_cell = np.bincount(cell, minlength=CELLS + 2)
    edge_cells = cells_of(edges, edges[0], edges[-1])
    holds_edge = np.zeros(CELLS + 2, dtype=bool)
    holds_edge[edge_cells] = True
    # A cell without an edge is inside the bin numbered by the edges in lower cells.
    bin_of_cell = np.searchsorted(edge_cells, np.arange(CELLS + 2), side="left")
    counts = np.bincount(bin_of_cell[~holds_edge], weights=per_cell[~holds_edge], minlength=nbins)
    counts = counts.astype(np.int64)
    counts += np.bincount(np.searchsorted(edges, x[holds_edge[cell]], side="right"), minlength=nbins)
    return counts


def quantiles(x: np.ndarray, q: np.ndarray) -> np.ndarray:
    """np.quantile(x, q) (linear interpolation) of finite `x`. For large arrays only the values in the
    grid cells holding the needed order statistics are sorted."""
    n = x.size
    lo, hi = (x.min(), x.max()) if n else (0.0, 0.0)
    cell = cells_of(x, lo, hi) if n >= MIN_VALUES else None
    if cell is None:
        return np.full(q.size, lo) if n and lo == hi else np.quantile(x, q)
    per_cell = np.bincount(cell, minlength=CELLS + 2)
    upto = np.cumsum(per_cell)
    position = n * q + (1.0 - q) - 1.0  # numpy's virtual index for method="linear"
    first = np.floor(position).astype(np.intp)
    second = np.minimum(first + 1, n - 1)
    ranks = np.union1d(first, second)
    rank_cells = np.searchsorted(upto, ranks, side="right")
    wanted = np.zeros(CELLS + 2, dtype=bool)
    wanted[rank_cells] = True
    picked = wanted[cell]
    if np.count_nonzero(picked) > n // 4:  # many ties in few cells: partitioning is cheaper
        return np.quantile(x, q)
    values = np.sort(x[picked])
    picked_per_cell = np.where(wanted, per_cell, 0)
    picked_below = np.cumsum(picked_per_cell) - picked_per_cell
    stats = values[picked_below[rank_cells] + ranks - (upto[rank_cells] - per_cell[rank_cells])]
    a, b = stats[np.searchsorted(ranks, first)], stats[np.searchsorted(ranks, second)]
    t = position - first
    return np.where(t >= 0.5, b - (b - a) * (1.0 - t), a + (b - a) * t)  # numpy's _lerp
