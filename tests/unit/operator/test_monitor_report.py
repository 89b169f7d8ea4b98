"""A DriftMonitor's HTML report (modelloop.report): drawn from real sketches, real drift reports and real
performance verdicts, and looked at as a person would: headless Chromium renders it, and the screenshot must
show the charts (the series' colours in the pixels), not only contain the markup."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest

from modelloop import report
from modelloop.api.drift import PerformanceSpec
from modelloop.drift import detect
from modelloop.drift import sketch as sketches
from modelloop.performance import assess
from modelloop.reasons import DriftEvent
from tests.fixtures.browser import pixels_near, screenshot

START = 1_796_000_000_000  # ms
MINUTE = 60_000


def churn(rows: int, seed: int, shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"tenure": rng.normal(12 + shift, 4, rows), "spend": rng.gamma(2.0, 30.0, rows),
                         "plan": rng.choice(["basic", "plus", "pro"], rows, p=[0.5 - shift / 20, 0.3, 0.2 + shift / 20])})


@pytest.fixture(scope="module")
def page() -> tuple[str, list[dict]]:
    return monitor_life()


def monitor_life() -> tuple[str, list[dict]]:
    """A monitor's life: two hours of v1 holding, a concept drift (accuracy falls, a retrain), v2 recovering."""
    reference = sketches.build_reference(churn(5000, 0), categorical=["plan"])
    live = sketches.count_into(sketches.empty_like(reference), churn(2000, 1, shift=4.0))
    drift = detect(reference, live).to_dict()
    spec = PerformanceSpec.model_validate({"minLabels": 200, "maxDrop": 0.05})
    history: list[dict] = []
    for minute in range(0, 180, 5):
        version = 1 if minute < 120 else 2
        accuracy = 0.86 if minute < 60 else 0.86 - (minute - 60) / 400 if version == 1 else 0.85
        live_perf = {str(version): {"labelled": 400 + minute * 5, "metrics": {"accuracy": {
            "value": accuracy, "low": accuracy - 0.03, "high": accuracy + 0.03}},
            "estimated": {"rows": 3000, "metrics": {"accuracy": {"value": 0.85, "low": 0.84, "high": 0.86}}}}}
        verdict = assess(spec, live_perf, version, {"accuracy": 0.87}, "accuracy")
        decisions = []
        if minute == 110:
            decisions.append(("Normal", DriftEvent.RETRAIN_REQUESTED, "requested a retrain of churn: live accuracy"))
        if minute == 120:
            decisions.append(("Normal", DriftEvent.REFERENCE_CHANGED, "now watching version 2"))
        point = report.history_point(millis=START + minute * MINUTE, version=version, samples=2000,
                                     drift=drift if minute % 20 == 0 else None, performance=verdict.entries,
                                     decisions=decisions)
        history = report.append_history(history, point)
    conditions = [{"type": "Ready", "status": "True", "reason": "Checked", "message": "checked 2000 rows"},
                  {"type": "PerformanceDegraded", "status": "False", "reason": "PerformanceHolds", "message": "holds"}]
    html = report.render_report(monitor="churn-drift", namespace="demo", deployment="churn", version=2,
                                generated=datetime(2026, 12, 7, tzinfo=timezone.utc), history=history,
                                conditions=conditions, drift=drift, reference=reference, live=live)
    return html, history


def test_report_is_one_self_contained_page(page):
    html, _ = page
    assert html.startswith("<!DOCTYPE html>")
    for outside in ("<script", "src=", "href=", "@import", "url("):
        assert outside not in html, f"the page reaches outside itself: {outside}"
    assert html.count("<svg") == 2 + 3  # accuracy over time, drift share over time, three features
    assert "RetrainRequested" in html and "ReferenceChanged" in html
    for feature in ("tenure", "spend", "plan"):
        assert f"<td>{feature}</td>" in html  # the tests table names every feature


def test_report_escapes_what_it_did_not_write(page):
    _, history = page
    html = report.render_report(monitor="<m>", namespace="ns", deployment="d&d", version=1,
                                generated=datetime(2026, 12, 7, tzinfo=timezone.utc), history=history,
                                conditions=[{"type": "Ready", "status": "False", "reason": "X",
                                             "message": "<img src=x onerror=alert(1)>"}],
                                drift=None, reference=None, live=None)
    assert "<img" not in html and "&lt;img src=x" in html and "d&amp;d" in html


def test_history_is_bounded_by_points_and_age():
    history: list[dict] = []
    for i in range(report.MAX_POINTS + 50):
        history = report.append_history(history, {"t": START + i, "version": 1, "samples": 0})
    assert len(history) == report.MAX_POINTS and history[-1]["t"] == START + report.MAX_POINTS + 49
    late = START + report.MAX_AGE_SECONDS * 1000 + 10**6
    assert report.append_history(history, {"t": late, "version": 1, "samples": 0}) == [
        {"t": late, "version": 1, "samples": 0}]


def test_history_round_trips_and_refuses_other_documents(page):
    _, history = page
    assert report.decode_history(json.loads(json.dumps(report.encode_history(history)))) == history
    for other in ([], {"format": "x", "points": history}, {"format": report.HISTORY_FORMAT, "points": "x"}):
        assert report.decode_history(other) == []


# ----------------------------------------------------------------------------------------- as a person sees it

def test_screenshot_shows_the_charts(page):
    html, _ = page
    image = screenshot(html)
    # Lines 2.5 px wide over 700 px of chart: thousands of pixels each, dashed ones half that; the legend's swatches
    # and labels alone give under 200 (the empty report below).
    assert pixels_near(image, report.LIVE) > 3000, "the live performance line and the live histograms are not drawn"
    assert pixels_near(image, report.ESTIMATED) > 400, "the label-free estimate is not drawn"
    assert pixels_near(image, report.HOLDOUT) > 400, "the hold-out line is not drawn"
    assert pixels_near(image, report.DRIFT) > 800, "the drifted-share line is not drawn"
    assert pixels_near(image, report.REFERENCE, tolerance=12) > 5000, "the reference histograms are not drawn"


def test_screenshot_of_an_empty_report_draws_no_chart():
    """The same measure on a monitor that decided nothing yet finds no series: the test above can fail."""
    html = report.render_report(monitor="m", namespace="ns", deployment="d", version=1,
                                generated=datetime(2026, 12, 7, tzinfo=timezone.utc), history=[], conditions=[],
                                drift=None, reference=None, live=None)
    image = screenshot(html, height=900)
    for colour in (report.LIVE, report.ESTIMATED, report.HOLDOUT, report.DRIFT):
        assert pixels_near(image, colour) < 200
