"""Which server the server benchmark measures where, and what it reports, computed from its raw wrk runs: the
runs of each comparison, medians over the repetitions, the best configuration of each server in each cell,
the ratios against the best MLServer configuration, the issue's targets, and the printed tables. Pure
functions; `run.py` does the measuring.

A raw run is a dict: {"repetition", "server" (label), "kind" ("modelloop" | "mlserver"), "rows",
"connections", "requests", "rps", "p50_ms", "p99_ms", "errors"}.
"""
from __future__ import annotations

import statistics
from typing import Any, Collection, Iterable, Mapping

MODELLOOP = "modelloop"
MLSERVER = "mlserver"
P50_TARGET_MS = 1.5  # at 1 connection, every model
TARGET_ROWS, TARGET_CONNECTIONS = 1, 64  # the targets are about 1-row requests; throughput at 64 connections


def measurement_plan(primary: Iterable[str], secondary: Iterable[str], connections: list[int], repeat: int,
                     secondary_connections: Collection[int], secondary_repeat: int
                     ) -> dict[str, tuple[list[int], int]]:
    """Server label -> (connection counts, repetitions). A server of a primary comparison: all `connections`, in
    `repeat` repetitions; one only in secondary comparisons: the `secondary_connections` among `connections`
    (all of them when it names none), in at most `repeat` repetitions."""
    fewer = [c for c in connections if c in secondary_connections] or list(connections)
    plan = {label: (fewer, min(secondary_repeat, repeat)) for label in secondary}
    plan.update({label: (list(connections), repeat) for label in primary})
    return plan


def common_plan(plan: Mapping[str, tuple[list[int], int]], labels: Iterable[str], connections: list[int]
                ) -> tuple[list[int], int]:
    """The connection counts (in the order of `connections`) and the repetitions at which every server of
    `labels` was measured: one comparison's cells."""
    chosen = [plan[label] for label in labels]
    return [c for c in connections if all(c in counts for counts, _ in chosen)], min(r for _, r in chosen)


def comparison_runs(runs: Iterable[dict[str, Any]], servers: Mapping[str, str], connections: Collection[int],
                    repetitions: int | None = None) -> list[dict[str, Any]]:
    """The runs of one comparison: those of the servers it names (label shown -> label measured), under the
    label shown, at its connection counts and in its first `repetitions` (all when None). One measured server
    can so stand in two comparisons under two names (modelloop-serve's runtime auto is its runtime onnx when
    the version holds model.onnx), and every server of a comparison has as many repetitions as the others."""
    shown_as: dict[str, list[str]] = {}
    for shown, measured in servers.items():
        shown_as.setdefault(measured, []).append(shown)
    return [{**run, "server": shown} for run in runs
            if run["connections"] in connections and (repetitions is None or run["repetition"] <= repetitions)
            for shown in shown_as.get(run["server"], [])]


def cell_medians(runs: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per server label (in first-seen order): median req/s, p50 and p99 over its repetitions (each metric's
    own median), the summed errors and the number of repetitions."""
    by_server: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_server.setdefault(run["server"], []).append(run)
    return {label: {"kind": reps[0]["kind"],
                    "rps": statistics.median(r["rps"] for r in reps),
                    "p50_ms": statistics.median(r["p50_ms"] for r in reps),
                    "p99_ms": statistics.median(r["p99_ms"] for r in reps),
                    "errors": sum(r["errors"] for r in reps),
                    "repetitions": len(reps)}
            for label, reps in by_server.items()}


def best_of(medians: dict[str, dict[str, Any]], kind: str) -> dict[str, Any]:
    """The configuration of `kind` with the highest median req/s, as {"config", "rps", "p50_ms", "p99_ms", ...}."""
    label = max((label for label, m in medians.items() if m["kind"] == kind), key=lambda label: medians[label]["rps"])
    return {"config": label, **{k: v for k, v in medians[label].items() if k != "kind"}}


def ratios(ours: dict[str, Any], best_mlserver: dict[str, Any]) -> dict[str, float]:
    """req/s ratio (higher is better) and p99 ratio (lower is better) of one of our configs over MLServer's best."""
    return {"rps_ratio": ours["rps"] / best_mlserver["rps"], "p99_ratio": ours["p99_ms"] / best_mlserver["p99_ms"]}


def summarise_cells(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (rows, connections) cell: each server's medians, our configs with their ratios, our best
    config and MLServer's best config (both chosen by median req/s)."""
    cells = []
    for rows, connections in sorted({(r["rows"], r["connections"]) for r in runs}):
        medians = cell_medians(r for r in runs if r["rows"] == rows and r["connections"] == connections)
        best_mlserver = best_of(medians, MLSERVER)
        ours = {label: {**{k: v for k, v in m.items() if k != "kind"}, **ratios(m, best_mlserver)}
                for label, m in medians.items() if m["kind"] == MODELLOOP}
        our_best = best_of(medians, MODELLOOP)
        cells.append({"rows": rows, "connections": connections,
                      "modelloop": ours,
                      "modelloop_best": {**our_best, **ratios(our_best, best_mlserver)},
                      "mlserver_best": best_mlserver,
                      "mlserver": {label: {k: v for k, v in m.items() if k != "kind"}
                                   for label, m in medians.items() if m["kind"] == MLSERVER}})
    return cells


def _cell(cells: list[dict[str, Any]], rows: int, connections: int) -> dict[str, Any] | None:
    return next((c for c in cells if c["rows"] == rows and c["connections"] == connections), None)


def check_targets(cells: list[dict[str, Any]], rps_ratio: float, p99_ratio: float | None = None
                  ) -> list[dict[str, Any]]:
    """The issue's targets for one model, judged on our best config of the cell (by req/s); `met` is None
    when the cell was not measured. Every config's own verdict is kept under "by_config"."""
    targets = []
    wanted = f"req/s >= {rps_ratio:g}x the best MLServer's" + (
        f" and p99 <= {p99_ratio:g}x its p99" if p99_ratio is not None else "")

    def meets_throughput(entry: dict[str, Any]) -> bool:
        return entry["rps_ratio"] >= rps_ratio and (p99_ratio is None or entry["p99_ratio"] <= p99_ratio)

    cell = _cell(cells, TARGET_ROWS, TARGET_CONNECTIONS)
    target: dict[str, Any] = {"target": f"{TARGET_ROWS} row x {TARGET_CONNECTIONS} connections: {wanted}",
                              "rows": TARGET_ROWS, "connections": TARGET_CONNECTIONS, "met": None}
    if cell is not None:
        best = cell["modelloop_best"]
        target.update(config=best["config"], rps_ratio=best["rps_ratio"], p99_ratio=best["p99_ratio"],
                      met=meets_throughput(best),
                      by_config={label: meets_throughput(entry) for label, entry in cell["modelloop"].items()})
    targets.append(target)

    cell = _cell(cells, TARGET_ROWS, 1)
    target = {"target": f"1 connection, {TARGET_ROWS} row: p50 < {P50_TARGET_MS:g} ms", "rows": TARGET_ROWS,
              "connections": 1, "met": None}
    if cell is not None:
        best = cell["modelloop_best"]
        target.update(config=best["config"], p50_ms=best["p50_ms"], met=best["p50_ms"] < P50_TARGET_MS,
                      by_config={label: entry["p50_ms"] < P50_TARGET_MS for label, entry in cell["modelloop"].items()})
    targets.append(target)
    return targets


def format_table(cells: list[dict[str, Any]]) -> str:
    """Medians per cell and server; our configs carry their ratios to the best MLServer config (marked *)."""
    width = max([28, *(len(label) + 1 for cell in cells for label in [*cell["modelloop"], *cell["mlserver"]])])
    lines = [f"{'rows':>4} {'conns':>5}  {'server':<{width}} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}"
             f"  {'req/s ratio':>11} {'p99 ratio':>9}"]
    for cell in cells:
        for label, m in cell["modelloop"].items():
            rps_ratio, p99_ratio = f"x{m['rps_ratio']:.2f}", f"x{m['p99_ratio']:.2f}"
            lines.append(f"{cell['rows']:>4} {cell['connections']:>5}  {label:<{width}} {m['rps']:>9.0f} "
                         f"{m['p50_ms']:>8.2f} {m['p99_ms']:>8.2f} {m['errors']:>6}  {rps_ratio:>11} {p99_ratio:>9}")
        for label, m in cell["mlserver"].items():
            star = "*" if label == cell["mlserver_best"]["config"] else ""
            lines.append(f"{cell['rows']:>4} {cell['connections']:>5}  {label + star:<{width}} {m['rps']:>9.0f} "
                         f"{m['p50_ms']:>8.2f} {m['p99_ms']:>8.2f} {m['errors']:>6}")
    return "\n".join(lines)


def format_targets(targets: list[dict[str, Any]]) -> str:
    lines = []
    for t in targets:
        verdict = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        if t["met"] is None:
            detail = ""
        elif "rps_ratio" in t:
            detail = f" ({t['config']}: req/s x{t['rps_ratio']:.2f}, p99 x{t['p99_ratio']:.2f})"
        else:
            detail = f" ({t['config']}: p50 {t['p50_ms']:.2f} ms)"
        lines.append(f"  target {t['target']}: {verdict}{detail}")
    return "\n".join(lines)


def format_comparison(comparison: str, what_it_compares: str, cells: list[dict[str, Any]],
                      targets: list[dict[str, Any]]) -> str:
    """One comparison of one model: its label and what it compares, its table, its targets."""
    return "\n".join([f"{comparison}: {what_it_compares}", format_table(cells), format_targets(targets)])
