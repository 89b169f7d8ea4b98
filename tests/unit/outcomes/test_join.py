"""The join of prediction and label records, and the live metrics with their intervals."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from sklearn import metrics as skm

from modelloop.outcomes import records
from modelloop.outcomes.join import (
    Labels, classification_metrics, join, live_performance, regression_metrics, window_performance,
)


def predictions(ids, labels, *, version=1, time=1000, proba=None) -> pa.Table:
    n = len(ids)
    return pa.table({"id": pa.array(ids, pa.string()), "version": pa.array([version] * n, pa.int32()),
                     "time": pa.array([time] * n, pa.int64()), "label": pa.array(labels, pa.string()),
                     "value": pa.nulls(n, pa.float64()),
                     "proba": pa.array(proba if proba is not None else [0.9] * n, pa.float64())},
                    schema=records.PREDICTION_SCHEMA)


def labels(ids, truth, *, time=2000) -> pa.Table:
    n = len(ids)
    return pa.table({"id": pa.array(ids, pa.string()), "time": pa.array([time] * n, pa.int64()),
                     "label": pa.array(truth, pa.string()), "value": pa.nulls(n, pa.float64())},
                    schema=records.LABEL_SCHEMA)


def test_only_labelled_predictions_are_joined_across_segments():
    segments = [predictions(["a:0", "a:1"], ["yes", "no"]), predictions(["b:0"], ["yes"], version=2)]
    joined = join(iter(segments), Labels.from_tables([labels(["a:1", "b:0", "z:9"], ["no", "no", "yes"])]))
    assert sorted(zip(joined["version"], joined["label"], joined["true_label"])) == [(1, "no", "no"), (2, "yes", "no")]


def test_the_newest_label_of_an_id_wins_and_a_retry_counts_once():
    first, retry, correction = (labels(["a:0"], ["no"], time=2000), labels(["a:0"], ["no"], time=2001),
                                labels(["a:0"], ["yes"], time=3000))
    assert join([predictions(["a:0"], ["yes"])], Labels.from_tables([first, retry]))["true_label"].tolist() == ["no"]
    joined = join([predictions(["a:0"], ["yes"])], Labels.from_tables([first, retry, correction]))
    assert joined["true_label"].tolist() == ["yes"]


def test_a_reused_request_id_counts_its_newest_prediction():
    old, new = predictions(["r:0"], ["no"], time=1000), predictions(["r:0"], ["yes"], time=5000)
    joined = join([old, new], Labels.from_tables([labels(["r:0"], ["yes"], time=6000)]))
    assert joined["label"].tolist() == ["yes"]


def test_labels_later_than_max_delay_are_left_out():
    joined = join([predictions(["a:0", "b:0"], ["yes", "yes"], time=0)],
                  Labels.from_tables([labels(["a:0"], ["yes"], time=500), labels(["b:0"], ["yes"], time=5000)]),
                  max_delay_ms=1000)
    assert joined["label"].size == 1


def test_an_empty_side_joins_to_nothing():
    assert join([predictions(["a:0"], ["yes"])], Labels.from_tables([])).empty
    assert join([], Labels.from_tables([labels(["a:0"], ["no"])])).empty


def test_classification_metrics_equal_scikit_learns():
    rng = np.random.default_rng(3)
    truth = rng.choice(["no", "yes"], 2000, p=[0.7, 0.3])
    p_yes = np.clip(np.where(truth == "yes", 0.65, 0.3) + rng.normal(0, 0.2, 2000), 0.01, 0.99)
    predicted = np.where(p_yes >= 0.5, "yes", "no")
    proba = np.where(predicted == "yes", p_yes, 1 - p_yes)  # what a record holds: the predicted class's
    got = classification_metrics(predicted, truth, ["no", "yes"], proba=proba)
    assert got["accuracy"].value == pytest.approx(skm.accuracy_score(truth, predicted))
    assert got["f1"].value == pytest.approx(skm.f1_score(truth, predicted, pos_label="yes"))
    assert got["precision"].value == pytest.approx(skm.precision_score(truth, predicted, pos_label="yes"))
    assert got["recall"].value == pytest.approx(skm.recall_score(truth, predicted, pos_label="yes"))
    assert got["roc_auc"].value == pytest.approx(skm.roc_auc_score(truth == "yes", p_yes))
    for estimate in got.values():
        assert estimate.low < estimate.value < estimate.high


def test_multiclass_f1_is_macro():
    rng = np.random.default_rng(4)
    truth = rng.choice(list("abc"), 900)
    predicted = np.where(rng.random(900) < 0.7, truth, rng.choice(list("abc"), 900))
    got = classification_metrics(predicted, truth, list("abc"))
    assert got["f1"].value == pytest.approx(skm.f1_score(truth, predicted, average="macro"))
    assert "roc_auc" not in got


def test_the_accuracy_interval_covers_the_truth_about_95_times_in_100():
    rng = np.random.default_rng(5)
    covered = 0
    for trial in range(300):
        truth = np.array(["yes"] * 400)
        predicted = np.where(rng.random(400) < 0.8, "yes", "no")
        estimate = classification_metrics(predicted, truth, ["no", "yes"], seed=trial)["accuracy"]
        covered += estimate.low <= 0.8 <= estimate.high
    assert 0.91 <= covered / 300 <= 0.99


def test_intervals_narrow_as_labels_accumulate():
    rng = np.random.default_rng(6)
    widths = []
    for n in (100, 10_000):
        truth = rng.choice(["no", "yes"], n)
        predicted = np.where(rng.random(n) < 0.85, truth, np.where(truth == "yes", "no", "yes"))
        estimate = classification_metrics(predicted, truth, ["no", "yes"])["accuracy"]
        widths.append(estimate.high - estimate.low)
    assert widths[1] < widths[0] / 5


def test_regression_metrics_equal_scikit_learns():
    rng = np.random.default_rng(7)
    truth = rng.normal(100, 20, 3000)
    predicted = truth + rng.normal(2, 5, 3000)
    got = regression_metrics(predicted, truth)
    assert got["mae"].value == pytest.approx(skm.mean_absolute_error(truth, predicted))
    assert got["rmse"].value == pytest.approx(np.sqrt(skm.mean_squared_error(truth, predicted)))
    assert got["r2"].value == pytest.approx(skm.r2_score(truth, predicted))
    assert got["rmse"].low < got["rmse"].value < got["rmse"].high


def test_live_performance_is_per_version():
    segments = [predictions(["a:0", "a:1", "a:2"], ["yes", "yes", "no"], version=1),
                predictions(["b:0", "b:1"], ["no", "no"], version=2)]
    joined = join(segments, Labels.from_tables([labels(["a:0", "a:1", "a:2", "b:0", "b:1"],
                                                       ["yes", "no", "no", "no", "no"])]))
    got = live_performance(joined, classifier=True, classes=["no", "yes"])
    assert got[1]["labelled"] == 3 and got[1]["metrics"]["accuracy"]["value"] == pytest.approx(2 / 3)
    assert got[2]["labelled"] == 2 and got[2]["metrics"]["accuracy"]["value"] == 1.0


def test_the_window_estimates_the_served_versions_accuracy_from_every_prediction():
    """Labelled or not, each prediction of the version counts with its calibrated confidence."""
    tables = {"predictions/2026-12-07/10/1765101600000-p.x-000000.parquet":
              predictions(["a:0", "a:1", "a:2", "a:3"], ["yes"] * 4, version=2, time=1765101600000,
                          proba=[0.9, 0.7, 0.8, 0.6]),
              "labels/2026-12-07/10/1765101601000-p.x-000000.parquet":
              labels(["a:0"], ["yes"], time=1765101601000)}
    identity = {"method": "identity", "x": [], "y": []}
    got = window_performance(tables, tables.__getitem__, since_ms=1765101500000, max_delay_ms=10**9,
                             classifier=True, classes=["no", "yes"], calibration=identity, version=2)
    assert got[2]["labelled"] == 1
    assert got[2]["estimated"]["rows"] == 4
    assert got[2]["estimated"]["metrics"]["accuracy"]["value"] == pytest.approx(0.75)
