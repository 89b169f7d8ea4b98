"""Prediction ids, prediction records and ground truth by id, against real `modelloop-serve` processes that
share one file:// feedback store, as two replicas of a deployment do (docs/outcomes.md)."""
from __future__ import annotations

import time
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from modelloop.outcomes import records

from .conftest import Artifact, ServerProcess, churn_frame, price_frame, running, v2_columns

CHURN_ROWS = churn_frame(rows=5, seed=11).drop(columns=["churned"])
PRICE_ROWS = price_frame(rows=4, seed=12).drop(columns=["price"])


def churn_request(request_id: str | None = None) -> dict:
    body = v2_columns({c: CHURN_ROWS[c].tolist() for c in CHURN_ROWS.columns},
                      {"plan": "BYTES", "region": "INT64"})
    if request_id is not None:
        body["id"] = request_id
    return body


def read_all(store: Path, kind: str) -> pa.Table | None:
    files = sorted((store / kind).rglob("*.parquet"))
    tables = [records.decode(f.read_bytes(), kind, max_rows=10_000_000) for f in files]
    return pa.concat_tables(tables) if tables else None


def wait_for(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met within the timeout")


@pytest.fixture(scope="module")
def replicas(artifacts: dict[str, Artifact], tmp_path_factory: pytest.TempPathFactory):
    """Two replicas of the churn classifier and one price regressor, all with feedback on."""
    root = tmp_path_factory.mktemp("feedback")
    store, price_store = root / "churn-store", root / "price-store"

    def server(name: str, artifact: Artifact, feedback: Path, *extra: str) -> ServerProcess:
        return ServerProcess(["--model-uri", artifact.uri, "--max-batch-wait-ms", "0", *extra], root / f"{name}.log",
                             env={"MODELLOOP_FEEDBACK_URI": f"file://{feedback}", "MODELLOOP_POD_NAME": name})

    started = {"a": server("churn-a", artifacts["churn"], store, "--max-feedback-ids", "100"),
               "b": server("churn-b", artifacts["churn"], store, "--max-feedback-ids", "100",
                           "--feedback-log-inputs", "true"),
               "prices": server("prices-a", artifacts["prices"], price_store)}
    with running(started):
        yield started, store, price_store


def test_v2_response_id_echoes_the_request_id_and_names_its_rows(replicas, client):
    (servers, _, _) = replicas
    response = client.post(f"{servers['a'].url}/v2/models/churn/infer", json=churn_request("order-17"))
    assert response.status_code == 200, response.text
    assert response.json()["id"] == "order-17" and response.headers["x-request-id"] == "order-17"


def test_a_request_without_an_id_gets_one_from_the_header_or_a_new_one(replicas, client):
    (servers, _, _) = replicas
    url = f"{servers['a'].url}/v2/models/churn/infer"
    from_header = client.post(url, json=churn_request(), headers={"X-Request-Id": "hdr-1"})
    generated = client.post(url, json=churn_request())
    assert from_header.json()["id"] == "hdr-1"
    assert len(generated.json()["id"]) == 32 and generated.headers["x-request-id"] == generated.json()["id"]
    bad = client.post(url, json=churn_request("has space"))
    assert bad.status_code == 400 and "request id" in bad.json()["error"]


def test_v1_answers_carry_an_id_too(replicas, client):
    (servers, _, _) = replicas
    rows = [{c: v for c, v in row.items()} for row in CHURN_ROWS.to_dict("records")]
    response = client.post(f"{servers['a'].url}/v1/models/churn:predict", json={"instances": rows},
                           headers={"X-Request-Id": "v1-req"})
    assert response.status_code == 200, response.text
    assert response.json()["id"] == "v1-req" and len(response.json()["predictions"]) == len(rows)


def test_every_prediction_row_is_recorded_without_its_inputs(replicas, client):
    (servers, store, _) = replicas
    response = client.post(f"{servers['a'].url}/v2/models/churn/infer", json=churn_request("rec-1"))
    predicted = response.json()["outputs"][0]["data"]
    ids = [f"rec-1:{i}" for i in range(len(predicted))]

    def recorded():
        table = read_all(store, records.PREDICTIONS)
        return table is not None and set(ids) <= set(table.column("id").to_pylist()) and table
    table = wait_for(recorded).to_pandas().set_index("id").loc[ids]
    assert table["label"].tolist() == [str(p) for p in predicted]
    assert (table["version"] == 1).all() and table["proba"].between(0.5, 1.0).all()  # the predicted class's
    assert table["value"].isna().all()
    files = list((store / records.PREDICTIONS).rglob("*churn-a*.parquet"))
    assert files and all(not any(c.startswith(records.INPUT_PREFIX) for c in records.decode(
        f.read_bytes(), records.PREDICTIONS, max_rows=10**6).column_names) for f in files)


def test_inputs_are_recorded_only_where_asked(replicas, client):
    (servers, store, _) = replicas
    client.post(f"{servers['b'].url}/v2/models/churn/infer", json=churn_request("inputs-1"))

    def recorded():
        for f in (store / records.PREDICTIONS).rglob("*churn-b*.parquet"):
            table = pq.read_table(f)
            if "inputs-1:0" in table.column("id").to_pylist():
                return table
        return None
    table = wait_for(recorded).to_pandas().set_index("id")
    assert {f"input.{c}" for c in CHURN_ROWS.columns} <= set(table.columns)
    assert table.loc["inputs-1:2", "input.plan"] == CHURN_ROWS["plan"].iloc[2]


def test_labels_for_one_replicas_predictions_are_accepted_by_another(replicas, client):
    (servers, store, _) = replicas
    predicted = client.post(f"{servers['a'].url}/v2/models/churn/infer", json=churn_request("join-1")).json()
    ids = [f"join-1:{i}" for i in range(len(predicted["outputs"][0]["data"]))]
    body = {"ids": ids, "targets": ["yes"] * len(ids)}
    # b learns a's predictions from the store, after a's next flush (about a second).
    response = wait_for(lambda: (r := client.post(f"{servers['b'].url}/v2/models/churn/feedback", json=body))
                        .status_code == 200 and r)
    assert response.json() == {"accepted": len(ids)}
    labels = read_all(store, records.LABELS).to_pandas().set_index("id")
    assert labels.loc[ids, "label"].tolist() == ["yes"] * len(ids)


def test_a_retried_feedback_call_is_accepted_again(replicas, client):
    (servers, store, _) = replicas
    client.post(f"{servers['a'].url}/v2/models/churn/infer", json=churn_request("retry-1"))
    body = {"ids": ["retry-1:0"], "targets": ["no"]}
    first = wait_for(lambda: (r := client.post(f"{servers['a'].url}/v2/models/churn/feedback", json=body))
                     .status_code == 200 and r)
    again = client.post(f"{servers['a'].url}/v2/models/churn/feedback", json=body)
    assert first.json() == again.json() == {"accepted": 1}


@pytest.mark.parametrize(("body", "status", "names"), [
    ({"ids": ["never-predicted:0"], "targets": ["yes"]}, 422, "were not predicted by this deployment"),
    ({"ids": ["x:0", "x:0"], "targets": ["yes", "no"]}, 400, "ids[1] 'x:0' appears twice"),
    ({"ids": ["x:0"], "targets": ["maybe"]}, 400, "targets[0] \"maybe\" is not one of the model's classes"),
    ({"ids": ["x:0"], "targets": [1]}, 400, "targets[0] 1 is not one of the model's classes"),
    ({"ids": ["no-row-number"], "targets": ["yes"]}, 400, "ids[0] is not a prediction id"),
    ({"ids": ["x:0"], "targets": []}, 400, "one target per id"),
    ({"ids": ["x:0"]}, 400, "exactly 'ids' and 'targets'"),
    ({"ids": [f"x:{i}" for i in range(101)], "targets": ["yes"] * 101}, 413, "the limit is 100"),
])
def test_bad_feedback_is_refused_with_the_reason_and_stores_nothing(replicas, client, body, status, names):
    (servers, store, _) = replicas
    before = sorted((store / records.LABELS).rglob("*.parquet")) if (store / records.LABELS).exists() else []
    response = client.post(f"{servers['a'].url}/v2/models/churn/feedback", json=body)
    assert response.status_code == status and names in response.json()["error"], response.text
    after = sorted((store / records.LABELS).rglob("*.parquet")) if (store / records.LABELS).exists() else []
    assert after == before


def test_a_feedback_body_over_the_limit_is_413(replicas, client):
    (servers, _, _) = replicas
    response = client.post(f"{servers['a'].url}/v2/models/churn/feedback", content=b"[" + b" " * (20 << 20) + b"]",
                           headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_a_regressor_takes_numbers_only(replicas, client):
    servers, _, price_store = replicas
    prices = servers["prices"]
    body = v2_columns({c: PRICE_ROWS[c].tolist() for c in PRICE_ROWS.columns})
    body["id"] = "price-1"
    assert client.post(f"{prices.url}/v2/models/prices/infer", json=body).status_code == 200
    refused = client.post(f"{prices.url}/v2/models/prices/feedback", json={"ids": ["price-1:0"], "targets": ["3"]})
    assert refused.status_code == 400 and "finite number" in refused.json()["error"]
    ok = wait_for(lambda: (r := client.post(f"{prices.url}/v2/models/prices/feedback",
                                            json={"ids": ["price-1:0"], "targets": [301.5]})).status_code == 200 and r)
    assert ok.json() == {"accepted": 1}
    labels = read_all(price_store, records.LABELS)
    assert labels.column("value").to_pylist() == [301.5]


def test_feedback_is_404_where_it_is_off(flowers: ServerProcess, client):
    response = client.post(f"{flowers.url}/v2/models/flowers/feedback", json={"ids": ["a:0"], "targets": ["x"]})
    assert response.status_code == 404 and "spec.feedback.uri" in response.json()["error"]


def test_records_reach_the_store_when_the_pod_stops(artifacts, tmp_path, client):
    """SIGTERM (what the kubelet sends) flushes what was recorded since the last flush."""
    store = tmp_path / "store"
    server = ServerProcess(["--model-uri", artifacts["churn"].uri, "--drain-seconds", "0"], tmp_path / "s.log",
                           env={"MODELLOOP_FEEDBACK_URI": f"file://{store}", "MODELLOOP_POD_NAME": "stopping"})
    server.start().wait_ready()
    try:
        client.post(f"{server.url}/v2/models/churn/infer", json=churn_request("last-words"))
        server.process.terminate()
        assert server.wait_exit() == 0
    finally:
        server.stop()
    table = read_all(store, records.PREDICTIONS)
    assert table is not None and "last-words:0" in table.column("id").to_pylist()


def test_live_performance_joins_every_replicas_records_on_the_sketch_port(replicas, client):
    (servers, _, _) = replicas
    since = int(time.time() * 1000)
    predicted = []
    for i, server in enumerate((servers["a"], servers["b"])):
        body = client.post(f"{server.url}/v2/models/churn/infer", json=churn_request(f"perf-{i}")).json()
        predicted += [(f"perf-{i}:{r}", label) for r, label in enumerate(body["outputs"][0]["data"])]
    # The truth: the first three predictions right, the others wrong.
    other = {"yes": "no", "no": "yes"}
    truth = [label if k < 3 else other[label] for k, (_, label) in enumerate(predicted)]
    body = {"ids": [pid for pid, _ in predicted], "targets": truth}
    wait_for(lambda: client.post(f"{servers['a'].url}/v2/models/churn/feedback", json=body).status_code == 200)
    url = f"{servers['b'].sketch_url}/v2/models/churn/performance?since={since}"
    got = client.get(url).json()["versions"]["1"]
    assert got["labelled"] == len(predicted)
    assert got["metrics"]["accuracy"]["value"] == pytest.approx(3 / len(predicted))
    assert got["metrics"]["accuracy"]["low"] <= got["metrics"]["accuracy"]["value"] <= got["metrics"]["accuracy"]["high"]
    # Only on the sketch port, which the NetworkPolicy opens to the operator alone.
    assert client.get(f"{servers['b'].url}/v2/models/churn/performance?since={since}").status_code == 404
    assert client.get(f"{servers['b'].sketch_url}/v2/models/churn/performance").status_code == 400


def test_retention_deletes_whole_days_older_than_it(artifacts, tmp_path):
    """Records of days before now - retention go; the cutoff's day and later stay."""
    from modelloop_server.config import ServerConfig
    from modelloop_server.metrics import ServerMetrics
    from modelloop_server.recording import open_outcomes

    store = tmp_path / "store"
    day = 86_400_000
    now = int(time.time() * 1000)
    for kind in records.KINDS:
        for age_days in (40, 31, 29, 0):
            key = records.segment_key(kind, now - age_days * day, "old-pod", 0)
            (store / key).parent.mkdir(parents=True, exist_ok=True)
            (store / key).write_bytes(b"x")

    class Model:
        version, classifier = 1, True
        schema = type("S", (), {"names": ("a",)})

    config = ServerConfig(model_uri="file:///unused", feedback_uri=f"file://{store}",
                          feedback_retention_seconds=30 * 86400.0)
    outcomes = open_outcomes(config, Model(), ServerMetrics())
    try:
        deleted = outcomes.expire()
        assert outcomes.expire() == []  # at most once an hour
    finally:
        outcomes.close()
    left = sorted(p.parent.parent.name for p in (store / records.PREDICTIONS).rglob("*.parquet"))
    assert len(deleted) == 4 and len(left) == 2
    assert all(records.days(now - 30 * day, now)[0] <= d for d in left)


def test_a_flood_of_feedback_calls_gets_503_and_loses_no_label(replicas):
    """Twenty callers at once: the server holds a few calls, refuses the rest with 503 and Retry-After, and
    every call it answered 200 is in the store."""
    import concurrent.futures

    (servers, store, _) = replicas
    predicted = httpx.post(f"{servers['a'].url}/v2/models/churn/infer", json=churn_request("flood"), timeout=10).json()
    n = len(predicted["outputs"][0]["data"])
    body = {"ids": [f"flood:{i}" for i in range(n)], "targets": ["yes"] * n}
    wait_for(lambda: httpx.post(f"{servers['a'].url}/v2/models/churn/feedback", json=body).status_code == 200)
    before = len(list((store / records.LABELS).rglob("*.parquet")))

    def call(_: int) -> httpx.Response:
        return httpx.post(f"{servers['a'].url}/v2/models/churn/feedback", json=body, timeout=30)
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(call, range(40)))
    codes = [a.status_code for a in answers]
    assert set(codes) <= {200, 503} and 503 in codes and 200 in codes, codes
    assert all(a.headers.get("retry-after") for a in answers if a.status_code == 503)
    after = len(list((store / records.LABELS).rglob("*.parquet")))
    assert after - before == codes.count(200)


def test_compaction_merges_closed_hours_and_changes_no_answer(tmp_path):
    """Two days ago, one hour of 120 one-second segments from two replicas, with labels: compaction leaves one
    segment per kind and hour, every row kept, and the live performance of the window is the same."""
    from modelloop_server.config import ServerConfig
    from modelloop_server.metrics import ServerMetrics
    from modelloop_server.recording import open_outcomes

    from tests.unit.outcomes.test_join import labels, predictions

    store = tmp_path / "store"
    hour = (int(time.time() * 1000) - 2 * 86_400_000) // 3_600_000 * 3_600_000
    for i in range(120):
        ids = [f"r{i}:{row}" for row in range(3)]
        segment = predictions(ids, ["yes", "no", "yes"], version=1, time=hour + i * 1000, proba=[0.9, 0.6, 0.8])
        key = records.segment_key(records.PREDICTIONS, hour + i * 1000, f"pod-{i % 2}", i)
        (store / key).parent.mkdir(parents=True, exist_ok=True)
        (store / key).write_bytes(records.encode(segment))
    key = records.segment_key(records.LABELS, hour + 200_000, "pod-0", 0)
    (store / key).parent.mkdir(parents=True, exist_ok=True)
    (store / key).write_bytes(records.encode(labels([f"r{i}:0" for i in range(120)], ["yes"] * 60 + ["no"] * 60,
                                                    time=hour + 200_000)))

    class Model:
        version, classifier, classes = 1, True, ["no", "yes"]
        schema = type("S", (), {"names": ("a",)})
        metadata: dict = {}

    config = ServerConfig(model_uri="file:///unused", feedback_uri=f"file://{store}",
                          feedback_max_delay_seconds=7 * 86400.0, feedback_retention_seconds=30 * 86400.0)
    outcomes = open_outcomes(config, Model(), ServerMetrics())
    try:
        before = outcomes.performance(Model(), hour - 1000)
        merged = outcomes.compact()
        after = outcomes.performance(Model(), hour - 1000)
        assert outcomes.compact() == []  # nothing left to merge
    finally:
        outcomes.close()
    files = sorted(p.relative_to(store).as_posix() for p in store.rglob("*.parquet"))
    assert len(merged) == 1 and len(files) == 2, files  # the one label segment was alone: left as it was
    assert read_all(store, records.PREDICTIONS).num_rows == 360
    assert before == after and after[1]["labelled"] == 120
    assert after[1]["metrics"]["accuracy"]["value"] == pytest.approx(0.5)


def test_the_id_index_stays_exact_while_it_merges_its_tiers(tmp_path):
    """Hundreds of segments added as a replica flushes them: every id stays known, unknown ones stay unknown,
    and the recent tier collapses instead of growing a binary search per segment."""
    import numpy as np
    from modelloop.artifacts.uri import parse_uri
    from modelloop.outcomes.join import hash_ids
    from modelloop_server.recording import PredictionIndex
    from modelloop.artifacts.backends import backend_for

    base = parse_uri(f"file://{tmp_path}")
    index = PredictionIndex(backend_for(base), base, max_delay_seconds=3600, max_recent=8)
    now = int(time.time() * 1000)
    for i in range(300):
        index.add(f"predictions/x/{i}", now, hash_ids([f"req{i}:{row}" for row in range(5)]))
    assert len(index._recent) <= 9 and len(index) == 1500
    known = hash_ids([f"req{i}:{row}" for i in range(300) for row in range(5)])
    assert not index.missing(known).any()
    assert index.missing(hash_ids(["req300:0", "req0:5"])).all()
    index._merge(now - 3_600_000)
    assert len(index._recent) == 0 and len(index._large) == 1500 and not index.missing(known).any()
    assert np.all(np.diff(index._large.astype(np.float64)) >= 0)
