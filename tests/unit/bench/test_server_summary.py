"""The server benchmark's plan and report: which server is measured where, the runs of each comparison, medians
over repetitions, the best configuration of a cell, ratios against the best MLServer configuration and the
issue's targets (bench/server/summary.py). No timing here: the numbers are made up."""
import pytest

from bench.server.summary import (check_targets, common_plan, comparison_runs, format_comparison, format_table,
                                  format_targets, measurement_plan, summarise_cells)


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


def test_one_measured_server_stands_in_two_comparisons_each_under_its_own_label():
    runs = [run("modelloop onnx(wait=2ms)", 1000, 1.0, 4.0), run("mlserver sklearn(pw=0)", 100, 8.0, 40.0),
            run("mlserver onnx(pw=0)", 400, 2.0, 10.0), run("modelloop sklearn(wait=2ms)", 500, 2.0, 8.0)]
    user = comparison_runs(runs, {"modelloop auto(wait=2ms)": "modelloop onnx(wait=2ms)",
                                  "mlserver sklearn(pw=0)": "mlserver sklearn(pw=0)"}, connections=[64])
    onnx = comparison_runs(runs, {"modelloop onnx(wait=2ms)": "modelloop onnx(wait=2ms)",
                                  "mlserver onnx(pw=0)": "mlserver onnx(pw=0)"}, connections=[64])
    [user_cell], [onnx_cell] = summarise_cells(user), summarise_cells(onnx)
    assert list(user_cell["modelloop"]) == ["modelloop auto(wait=2ms)"]
    assert user_cell["modelloop"]["modelloop auto(wait=2ms)"]["rps_ratio"] == pytest.approx(10.0)
    assert list(user_cell["mlserver"]) == ["mlserver sklearn(pw=0)"]
    assert onnx_cell["modelloop"]["modelloop onnx(wait=2ms)"]["rps_ratio"] == pytest.approx(2.5)
    assert [r["server"] for r in runs] == ["modelloop onnx(wait=2ms)", "mlserver sklearn(pw=0)", "mlserver onnx(pw=0)",
                                           "modelloop sklearn(wait=2ms)"]  # the raw runs keep their labels


def test_a_comparison_keeps_only_its_connection_counts_and_repetitions():
    runs = [run(s, 100 * rep, 1.0, 2.0, connections=c, repetition=rep)
            for s in ("modelloop onnx(wait=2ms)", "mlserver onnx(pw=0)") for c in (1, 8, 64) for rep in (1, 2, 3)]
    kept = comparison_runs(runs, {"modelloop onnx(wait=2ms)": "modelloop onnx(wait=2ms)",
                                  "mlserver onnx(pw=0)": "mlserver onnx(pw=0)"}, connections=[1, 64], repetitions=2)
    assert sorted({(r["connections"], r["repetition"]) for r in kept}) == [(1, 1), (1, 2), (64, 1), (64, 2)]
    assert [c["modelloop"]["modelloop onnx(wait=2ms)"]["repetitions"] for c in summarise_cells(kept)] == [2, 2]


def test_servers_only_in_the_secondary_comparison_get_fewer_counts_and_repetitions_the_others_all():
    plan = measurement_plan(primary=["modelloop sklearn", "modelloop onnx", "mlserver sklearn"],
                            secondary=["modelloop onnx", "mlserver onnx"], connections=[1, 8, 64], repeat=3,
                            secondary_connections=[64, 1, 256], secondary_repeat=2)
    assert plan == {"modelloop sklearn": ([1, 8, 64], 3), "modelloop onnx": ([1, 8, 64], 3),
                    "mlserver sklearn": ([1, 8, 64], 3), "mlserver onnx": ([1, 64], 2)}
    smoke = measurement_plan(primary=["ours"], secondary=["theirs"], connections=[1], repeat=1,
                             secondary_connections=[64], secondary_repeat=2)
    assert smoke == {"ours": ([1], 1), "theirs": ([1], 1)}  # a smoke run's one cell is measured by everyone


def test_a_comparisons_cells_are_those_where_every_one_of_its_servers_was_measured():
    plan = {"modelloop onnx": ([1, 8, 64], 3), "mlserver onnx": ([1, 64], 2), "mlserver sklearn": ([1, 8, 64], 3)}
    assert common_plan(plan, ["modelloop onnx", "mlserver onnx"], [1, 8, 64]) == ([1, 64], 2)
    assert common_plan(plan, ["modelloop onnx", "mlserver sklearn"], [1, 8, 64]) == ([1, 8, 64], 3)


def test_each_comparison_is_printed_under_its_label_with_what_it_compares():
    cells = summarise_cells([run("modelloop sklearn(wait=2ms)", 300, 1.0, 4.0),
                             run("mlserver sklearn(pw=0)", 100, 8.0, 40.0)])
    text = format_comparison("(a) servers", "the same estimator in both", cells, check_targets(cells, rps_ratio=5))
    lines = text.splitlines()
    assert lines[0] == "(a) servers: the same estimator in both"
    assert "modelloop sklearn(wait=2ms)" in lines[2] and "x3.00" in lines[2]
    assert "mlserver sklearn(pw=0)*" in lines[3]
    assert "MISSED" in text
