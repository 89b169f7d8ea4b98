"""Every benchmark that writes a results file names the commit it measured (bench/measured.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[3] / "bench"
WRITERS = sorted(p for p in BENCH.glob("*/*.py") if "results" in p.read_text() and "json.dump" in p.read_text())


def test_the_benchmarks_are_found():
    assert {p.parent.name for p in WRITERS} >= {"server", "drift", "feedback", "training", "limits", "cbpe"}


@pytest.mark.parametrize("script", WRITERS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_results_name_the_commit_measured(script):
    text = script.read_text()
    assert "commit_measured(" in text or "run_facts(" in text, f"{script} writes results without the commit"
