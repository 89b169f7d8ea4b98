"""The server benchmark's report: medians over repetitions, the best configuration of a cell, ratios against
the best MLServer configuration and the issue's targets (bench/server/summary.py). No timing here: the
numbers are made up."""
import pytest

from bench.server.summary import check_targets, format_table, format_targets, summarise_cells


def run(server, rps, p50, p99, rows=1, connections=64, repetition=1, errors=0):
    kind = "modelloop" if server.startswith("modelloop") else "mlserver"
    return {"repetition": repetition, "server": server, "kind": kind, "rows": rows, "connections": connections,
            "requests": int(rps), "rps": rps, "p50_ms": p50, "p99_ms": p99, "errors": errors}


def repeated(server, values, **cell):
    return [run(server, *v, repetition=i + 1, **cell) for i, v in enumerate(values)]


def test_each_metric_is_the_median_of_its_repetitions_and_errors_add_up():
    runs = (repeated("modelloop(wait=0)", [(1000, 1.0, 9.0), (3000, 3.0, 1.0), (2000, 2.0, 5.0)])
            + repeated("mlserver(pw=0)", [(100, 10.0, 50.0)] * 3))
    runs[0]["errors"] = 2
    [cell] = summarise_cells(runs)
    ours = cell["modelloop"]["modelloop(wait=0)"]
    assert (ours["rps"], ours["p50_ms"], ours["p99_ms"]) == (2000, 2.0, 5.0)
    assert (ours["errors"], ours["repetitions"]) == (2, 3)


def test_ratios_are_against_the_mlserver_config_with_the_most_requests_per_second():
    runs = [run("modelloop(wait=0)", 1000, 1.0, 4.0), run("modelloop(wait=2ms)", 1200, 1.5, 3.0),
            run("mlserver(pw=0)", 100, 8.0, 40.0), run("mlserver(pw=1,batch=32/2ms)", 200, 9.0, 20.0)]
    [cell] = summarise_cells(runs)
    assert cell["mlserver_best"]["config"] == "mlserver(pw=1,batch=32/2ms)"
    assert cell["mlserver_best"]["p99_ms"] == 20.0
    assert cell["modelloop"]["modelloop(wait=0)"]["rps_ratio"] == pytest.approx(5.0)
    assert cell["modelloop"]["modelloop(wait=0)"]["p99_ratio"] == pytest.approx(0.2)
    assert cell["modelloop_best"]["config"] == "modelloop(wait=2ms)"
    assert cell["modelloop_best"]["rps_ratio"] == pytest.approx(6.0)


def test_cells_are_kept_apart_and_sorted_by_rows_then_connections():
    runs = [run(s, 10, 1.0, 1.0, rows=r, connections=c)
            for r, c in [(16, 1), (1, 64), (1, 1)] for s in ("modelloop(wait=0)", "mlserver(pw=0)")]
    assert [(c["rows"], c["connections"]) for c in summarise_cells(runs)] == [(1, 1), (1, 64), (16, 1)]


def test_throughput_target_needs_both_the_ratio_and_the_p99_bound():
    fast_but_slow_tail = [run("modelloop(wait=0)", 1100, 1.0, 30.0), run("mlserver(pw=0)", 100, 5.0, 40.0)]
    [target, _] = check_targets(summarise_cells(fast_but_slow_tail), rps_ratio=10, p99_ratio=0.5)
    assert (target["met"], target["config"]) == (False, "modelloop(wait=0)")

    both = [run("modelloop(wait=0)", 1100, 1.0, 10.0), run("mlserver(pw=0)", 100, 5.0, 40.0)]
    [target, _] = check_targets(summarise_cells(both), rps_ratio=10, p99_ratio=0.5)
    assert target["met"] is True
    assert target["by_config"] == {"modelloop(wait=0)": True}


def test_p50_target_at_one_connection_and_unmeasured_cells_are_neither_met_nor_missed():
    runs = [run("modelloop(wait=0)", 900, 1.2, 3.0, connections=1), run("mlserver(pw=0)", 300, 3.0, 9.0, connections=1)]
    throughput, latency = check_targets(summarise_cells(runs), rps_ratio=5)
    assert throughput["met"] is None
    assert (latency["met"], latency["p50_ms"]) == (True, 1.2)
    assert "not measured" in format_targets([throughput]) and "met (modelloop(wait=0)" in format_targets([latency])


def test_table_marks_the_best_mlserver_config_and_gives_our_ratios():
    runs = [run("modelloop(wait=0)", 1000, 1.0, 4.0), run("mlserver(pw=0)", 100, 8.0, 40.0),
            run("mlserver(pw=1)", 50, 9.0, 20.0)]
    table = format_table(summarise_cells(runs)).splitlines()
    assert "x10.00" in table[1] and "x0.10" in table[1]
    assert "mlserver(pw=0)*" in table[2] and "*" not in table[3]
