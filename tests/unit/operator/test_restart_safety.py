"""Side effects that survive a restart anywhere: adopted Jobs keep their generation, retrain requests are recorded
before they are delivered, drift baselines round-trip through their ConfigMap form."""
from __future__ import annotations

import numpy as np
import pytest

from modelloop import kube
from modelloop.controllers import drift
from modelloop.runs import adopted_run
from modelloop.drift import sketch as sketches


def job(annotations: dict) -> dict:
    return {"metadata": {"name": "churn-v3", "labels": {"modelloop.dev/version": "3"}, "annotations": annotations,
                         "creationTimestamp": "2026-12-02T10:00:00Z"}}


def test_an_adopted_job_keeps_the_generation_it_trains():
    run = adopted_run(job({"modelloop.dev/trigger": "SpecChanged", "modelloop.dev/generation": "4"}), generation=7)
    assert run == {"version": 3, "job": "churn-v3", "trigger": "SpecChanged", "generation": 4, "result": "Running",
                   "startTime": "2026-12-02T10:00:00Z"}


@pytest.mark.parametrize("annotations", [{}, {"modelloop.dev/generation": "x"}])
def test_a_job_without_a_readable_generation_counts_as_the_current_one(annotations):
    assert adopted_run(job(annotations), generation=7)["generation"] == 7


def test_a_baseline_round_trips_through_its_configmap_form():
    reference = sketches.build_reference({"x": np.arange(100.0), "plan": ["a", "b"] * 50}, categorical=["plan"])
    snapshot = {**sketches.count_into(sketches.empty_like(reference), {"x": np.arange(7.0), "plan": ["a"] * 7}),
                "instance": "pod-a"}
    data = drift.encode_baseline(3, {"pod-a": snapshot})
    assert data is not None
    assert drift.decode_baseline(data) == (3, {"pod-a": snapshot})


def test_a_baseline_too_large_for_a_configmap_is_not_kept(monkeypatch):
    monkeypatch.setattr(drift, "MAX_BASELINE_BYTES", 10)
    assert drift.encode_baseline(1, {"pod": {"a": "b" * 1000}}) is None


def test_baseline_names_fit_a_configmap():
    assert drift.baseline_name("churn") == "churn-drift-baseline"
    assert len(drift.baseline_name("m" * 253)) <= 253


def test_a_recorded_retrain_request_is_delivered_with_its_dataset(monkeypatch):
    calls = []
    monkeypatch.setattr(kube, "patch", lambda *a, **k: calls.append(("patch", a[2:4], a[4])))
    monkeypatch.setattr(kube, "write_status", lambda obj, st: calls.append(("status", st)) or obj)
    obj = {"metadata": {"namespace": "ns", "name": "mon"}}
    request = {"training": "churn", "value": "DriftMonitor mon at t: drift", "datasetUri": "s3://b/fresh.csv",
               "delivered": False}
    drift.deliver_retrain(obj, request)
    assert calls == [  # the delivery only: the status that records it is written before, and marks it at the next check
        ("patch", ("ns", "churn"), {"metadata": {"annotations": {"modelloop.dev/retrain-requested": request["value"],
                                                                 "modelloop.dev/retrain-dataset-uri": "s3://b/fresh.csv"}}}),
    ]
