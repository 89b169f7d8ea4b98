"""Two versions on the same prediction ids (modelloop.outcomes.paired), fed to the champion/challenger gates."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from modelloop.analysis import Paired, Served, Thresholds, analyse
from modelloop.outcomes.join import Labels, join
from modelloop.outcomes.paired import paired_versions


def segment(ids, version, labels=None, values=None, start=1_796_000_000_000):
    n = len(ids)
    return pa.table({"id": pa.array(ids, pa.string()), "version": pa.array(np.full(n, version, np.int32)),
                     "time": pa.array(np.arange(n, dtype=np.int64) + start),
                     "label": pa.array(labels if labels is not None else [None] * n, pa.string()),
                     "value": pa.array(values if values is not None else [None] * n, pa.float64()),
                     "proba": pa.array([0.9] * n, pa.float64())})


def label_table(ids, labels=None, values=None):
    n = len(ids)
    return pa.table({"id": pa.array(ids, pa.string()), "time": pa.array(np.full(n, 1_796_000_100_000, np.int64)),
                     "label": pa.array(labels if labels is not None else [None] * n, pa.string()),
                     "value": pa.array(values if values is not None else [None] * n, pa.float64())})


def test_a_shadowed_challenger_trained_on_shuffled_labels_is_told_apart_on_the_same_rows():
    rng = np.random.default_rng(3)
    ids = [f"r{i}:0" for i in range(3000)]
    truth = rng.choice(["yes", "no"], 3000)
    champion = np.where(rng.random(3000) < 0.85, truth, np.where(truth == "yes", "no", "yes"))  # 85% right
    challenger = rng.choice(["yes", "no"], 3000)  # shuffled labels: a coin
    segments = [segment(ids[:1500], 1, list(champion[:1500])), segment(ids[:1500], 2, list(challenger[:1500])),
                segment(ids[1500:], 1, list(champion[1500:])), segment(ids[1500:], 2, list(challenger[1500:])),
                segment(["only-v1:0"], 1, ["yes"])]
    labels = Labels.from_tables([label_table(ids[:1000], list(truth[:1000]))])
    found = paired_versions(iter(segments), labels, champion=1, challenger=2, classifier=True)
    assert found["rows"] == 3000  # the id only v1 predicted is not a pair
    assert found["agreed"] == int((champion == challenger).sum())
    assert found["champion_only_right"] + found["challenger_only_right"] == int(
        ((champion[:1000] == truth[:1000]) != (challenger[:1000] == truth[:1000])).sum())
    verdict = analyse(Thresholds(), Served(3000, 0, 0.01), Served(3000, 0, 0.01), Paired(**found), classifier=True,
                      elapsed_seconds=900)
    assert verdict.decision == "reject"


def test_regressors_get_the_output_distance_and_the_paired_absolute_error_differences():
    ids = [f"r{i}:0" for i in range(500)]
    truth = np.linspace(0, 10, 500)
    segments = [segment(ids, 1, values=list(truth + 0.1)), segment(ids, 2, values=list(truth + 1.0))]
    labels = Labels.from_tables([label_table(ids[:300], values=list(truth[:300]))])
    found = paired_versions(segments, labels, champion=1, challenger=2, classifier=False)
    n, mean, sd = found["loss_differences"]
    assert n == 300 and abs(mean - 0.9) < 1e-9 and sd < 1e-9
    assert 0.2 < found["output_distance"] < 0.4  # 0.9 apart, in units of the outputs' spread (~2.9)


def test_the_live_join_keeps_each_versions_prediction_of_a_shadowed_id():
    ids = ["a:0", "b:0"]
    joined = join([segment(ids, 1, ["yes", "no"]), segment(ids, 2, ["no", "no"])],
                  Labels.from_tables([label_table(ids, ["yes", "no"])]))
    assert sorted(zip(joined["version"], joined["label"])) == [(1, "no"), (1, "yes"), (2, "no"), (2, "no")]


def test_a_window_pairs_only_the_predictions_made_since_its_start_and_labels_within_max_delay():
    """As the live performance reads a window: a segment named before the start still gives its later rows, its
    earlier ones are left out; a label that came later than maxDelay after the predictions does not count."""
    from modelloop.outcomes import records
    from modelloop.outcomes.paired import window_paired

    since = 1_796_000_000_000
    early = [f"e{i}:0" for i in range(4)]   # predicted before since, in the segment that straddles it
    late = [f"l{i}:0" for i in range(6)]    # after since
    tables = {}
    for version, answer in ((1, "yes"), (2, "no")):
        table = pa.concat_tables([segment(early, version, [answer] * 4, start=since - 30_000),
                                  segment(late, version, [answer] * 6, start=since + 1)])
        tables[records.segment_key(records.PREDICTIONS, since - 30_000, f"pod-{version}", 0)] = table
    on_time = label_table(late[:4], ["yes"] * 4)  # arrives at 1_796_000_100_000: within 200 s
    too_late = pa.table({"id": pa.array(late[4:] + early, pa.string()),
                         "time": pa.array([since + 10_000_000] * 6, pa.int64()),
                         "label": pa.array(["yes"] * 6, pa.string()), "value": pa.nulls(6, pa.float64())})
    tables[records.segment_key(records.LABELS, since + 100_000, "pod-1", 0)] = on_time
    tables[records.segment_key(records.LABELS, since + 10_000_000, "pod-1", 1)] = too_late
    found = window_paired(tables, tables.__getitem__, since_ms=since, max_delay_ms=200_000, champion=1, challenger=2,
                          classifier=True)
    assert found == {"rows": 6, "agreed": 0, "champion_only_right": 4, "challenger_only_right": 0}
