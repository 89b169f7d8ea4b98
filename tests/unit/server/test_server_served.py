"""What the operator reads from the servers for a champion/challenger analysis (docs/challenger.md, "What the
operator reads"), over real HTTP on the sketch port:

- `/served`: this process's inference requests by minute over the last day (modelloop_server.served), read here
  from an app whose clock the test moves, so that windows are checked without sleeping;
- `/compare`: two versions on the same prediction ids, from real records: a champion server copies its requests to
  a challenger (a version trained on shuffled labels), both record, labels come back, and the answer is checked
  against the records read from the store.

Both answers go through the operator's parsers (modelloop.served), so the contract is checked from both ends.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pandas as pd
import pytest
from modelloop.analysis import Paired
from modelloop.outcomes import records
from modelloop.served import merge_served, parse_paired, parse_served

from modelloop_server.app import ModelServerApp
from modelloop_server.config import ServerConfig
from modelloop_server.metrics import LATENCY_BUCKETS
from modelloop_server.served import ServedWindow

from .conftest import (
    FOREST, Artifact, ServerProcess, churn_frame, free_port, price_frame, running, serve_in_thread, train_version,
    v2_columns, v2_matrix,
)
from .test_server_limits import ROW, FailingEstimator, served, wait_until
from tests.unit.outcomes.test_paired import segment

START = 1_800_000_030.0  # epoch seconds, 30 s into a minute


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Serving:
    """The flowers model over real HTTP (in a thread), its served window on a clock the test moves, its estimator
    able to fail like a bug (500)."""

    def __init__(self, url: str, app: ModelServerApp, clock: Clock, estimator: FailingEstimator) -> None:
        self.url, self.app, self.clock, self.estimator = url, app, clock, estimator
        self.sketch_url = f"http://127.0.0.1:{app.config.sketch_port}"

    def infer(self, **headers: str) -> httpx.Response:
        return httpx.post(f"{self.url}/v2/models/flowers/infer", json=v2_matrix([ROW]), headers=headers)

    def served(self, since: int | str, path: str = "/v2/models/flowers/served") -> httpx.Response:
        return httpx.get(f"{self.sketch_url}{path}?since={since}")


@pytest.fixture
def serving(artifacts: dict[str, Artifact]) -> Iterator[Serving]:
    model, estimator = served(artifacts["flowers"], FailingEstimator)
    app = ModelServerApp(ServerConfig(sketch_port=free_port(), model_uri=artifacts["flowers"].uri,
                                      max_batch_wait_ms=0), load=lambda: model)
    clock = Clock(START)
    app.served = ServedWindow(LATENCY_BUCKETS, clock=clock)
    with serve_in_thread(app) as url:
        wait_until(lambda: httpx.get(f"{url}/v2/health/ready").status_code == 200)
        yield Serving(url, app, clock, estimator)


def test_served_counts_inference_requests_by_outcome_and_marks_shadow_copies(serving: Serving):
    assert serving.infer().status_code == 200
    assert serving.infer(**{"X-Modelloop-Shadow": "1"}).status_code == 200  # a champion's copy
    v1 = httpx.post(f"{serving.url}/v1/models/flowers:predict", json={"instances": [ROW]})
    assert v1.status_code == 200
    assert httpx.post(f"{serving.url}/v2/models/flowers/infer", json={"inputs": []}).status_code == 400
    assert httpx.post(f"{serving.url}/v2/models/other/infer", json=v2_matrix([ROW])).status_code == 404
    serving.estimator.armed = True
    try:
        assert serving.infer().status_code == 500
    finally:
        serving.estimator.armed = False
    for path in ("/v2/health/ready", "/v2/models/flowers", "/metrics", "/v2/nowhere"):  # not inference: not counted
        httpx.get(f"{serving.url}{path}")

    answer = serving.served(0)
    assert answer.status_code == 200, answer.text
    got = answer.json()
    sketch = httpx.get(f"{serving.sketch_url}/v2/models/flowers/sketch").json()
    assert {k: got[k] for k in ("modelVersion", "instance", "since")} == {
        "modelVersion": 1, "instance": sketch["instance"], "since": int(START * 1000)}  # counted from the start
    assert (got["requests"], got["errors"], got["clientErrors"], got["shadowRequests"]) == (6, 1, 2, 1)
    assert got["latency"]["bounds"] == list(LATENCY_BUCKETS) and sum(got["latency"]["counts"]) == 6
    assert len(got["latency"]["counts"]) == len(LATENCY_BUCKETS) + 1
    merged = merge_served([parse_served(got)])  # what the operator makes of it
    assert (merged.requests, merged.errors) == (6, 1) and 0 < merged.p99_seconds <= LATENCY_BUCKETS[-1]


def test_served_is_on_the_sketch_port_only_and_refuses_a_bad_since_and_compare_needs_feedback(serving: Serving):
    assert httpx.get(f"{serving.url}/v2/models/flowers/served?since=0").status_code == 404
    assert serving.served(0, "/v2/models/flowers/versions/1/served").status_code == 200
    assert serving.served(0, "/v2/models/flowers/versions/2/served").status_code == 404
    for since in ("", "-1", "1.5", "abc", "9" * 5000):
        answer = serving.served(since)
        assert answer.status_code == 400 and "?since=<epoch milliseconds>" in answer.json()["error"], since
    assert httpx.get(f"{serving.sketch_url}/v2/models/flowers/served").status_code == 400
    # /compare reads the records: a server with feedback off has none
    off = httpx.get(f"{serving.sketch_url}/v2/models/flowers/compare?champion=1&challenger=2&since=0")
    assert off.status_code == 404 and "feedback is off" in off.json()["error"]


def test_the_window_starts_at_the_minute_of_since_and_forgets_minutes_older_than_a_day(serving: Serving):
    minute = int(START // 60) * 60
    for _ in range(2):
        serving.infer()
    serving.clock.now = START + 120  # two minutes later
    for _ in range(3):
        serving.infer()

    def window(since_seconds: float) -> tuple[int, int]:
        got = serving.served(int(since_seconds * 1000)).json()
        return got["requests"], got["since"]
    assert window(START + 119) == (3, (minute + 120) * 1000)  # since in the minute of the later three
    assert window(START + 60) == (3, (minute + 60) * 1000)    # a minute with nothing counted is still the start
    assert window(0) == (5, int(START * 1000))
    assert window(START + 3600) == (0, (minute + 3600) * 1000)  # a since in the future counts nothing

    serving.clock.now = minute + 24 * 3600 + 60 + 5  # a day later: the first minute has left the window
    serving.infer()
    assert window(0) == (4, (minute + 120) * 1000)


# ----------------------------------------------------------------------------------------- /compare

CHURN = churn_frame(rows=200, seed=21)
REQUESTS = 10  # of 20 rows each


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory):
    """Two versions of the churn classifier: v1 trained on the labels, v2 on shuffled ones; and two price
    regressor servers' store."""
    root = tmp_path_factory.mktemp("compare")
    frame = churn_frame()
    shuffled = frame.assign(churned=np.random.default_rng(5).permutation(frame["churned"].to_numpy()))
    v1, _ = train_version(root, "churn", frame, "churned", FOREST, categorical=["region"], version=1)
    v2, _ = train_version(root, "churn", shuffled, "churned", FOREST, categorical=["region"], version=2)
    prices, _ = train_version(root, "prices", price_frame(), "price", {"class": "sklearn.linear_model.Ridge"})
    store, price_store = root / "store", root / "price-store"

    def server(name: str, uri: str, feedback: Path, *extra: str) -> ServerProcess:
        return ServerProcess(["--model-uri", uri, "--model-name", "churn" if "churn" in name else "prices",
                              "--max-batch-wait-ms", "0", *extra], root / f"{name}.log",
                             env={"MODELLOOP_FEEDBACK_URI": f"file://{feedback}", "MODELLOOP_POD_NAME": name})
    challenger = server("churn-challenger", v2, store)
    champion = server("churn-champion", v1, store, "--shadow-to", f"127.0.0.1:{challenger.port}")
    started = {"champion": champion, "challenger": challenger, "prices": server("prices-a", prices, price_store)}
    with running(started):
        yield started, store, price_store


def churn_request(rows: pd.DataFrame, request_id: str) -> dict:
    body = v2_columns({c: rows[c].tolist() for c in rows.columns if c != "churned"},
                      {"plan": "BYTES", "region": "INT64"})
    return {**body, "id": request_id}


def store_predictions(store: Path) -> pd.DataFrame:
    tables = [records.decode(f.read_bytes(), records.PREDICTIONS, max_rows=10**6).to_pandas()
              for f in (store / records.PREDICTIONS).rglob("*.parquet")]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=["id", "version", "label"])


def test_compare_pairs_the_champions_and_the_shadowed_challengers_predictions_with_their_labels(versions):
    (servers, store, _) = versions
    champion, challenger = servers["champion"], servers["challenger"]
    since = int(time.time() * 1000)
    ids, truth = [], []
    for i in range(REQUESTS):
        rows = CHURN.iloc[i * 20:(i + 1) * 20]
        answer = httpx.post(f"{champion.url}/v2/models/churn/infer", json=churn_request(rows, f"cmp-{i}"), timeout=10)
        assert answer.status_code == 200, answer.text
        ids += [f"cmp-{i}:{r}" for r in range(len(rows))]
        truth += rows["churned"].tolist()
    wait_until(lambda: champion.metric("modelloop_server_shadow_copies_total", {"outcome": "sent"}) == REQUESTS)
    feedback = {"ids": ids, "targets": truth}
    wait_until(lambda: httpx.post(f"{champion.url}/v2/models/churn/feedback", json=feedback).status_code == 200)

    url = f"{challenger.sketch_url}/v2/models/churn/compare?champion=1&challenger=2&since={since}"
    wait_until(lambda: httpx.get(url).json()["rows"] == len(ids))  # both versions' records have reached the store
    got = httpx.get(url).json()

    recorded = store_predictions(store)
    recorded = recorded[recorded["id"].isin(ids)].pivot(index="id", columns="version", values="label").loc[ids]
    right = recorded.eq(pd.Series(truth, index=ids), axis=0)
    assert got == {"since": since, "champion": 1, "challenger": 2, "rows": len(ids),
                   "agreed": int((recorded[1] == recorded[2]).sum()),
                   "championOnlyRight": int((right[1] & ~right[2]).sum()),
                   "challengerOnlyRight": int((right[2] & ~right[1]).sum()),
                   "outputDistance": None, "lossDifferences": None}
    assert got["championOnlyRight"] > got["challengerOnlyRight"]  # shuffled labels do worse on the same rows
    assert isinstance(parse_paired(got, champion=1, challenger=2), Paired)

    # What each side served: every request the challenger answered was a copy.
    seen = {name: parse_served(httpx.get(f"{s.sketch_url}/v2/models/churn/served?since={since}").json())
            for name, s in (("champion", champion), ("challenger", challenger))}
    assert (seen["champion"]["requests"], seen["champion"]["shadowRequests"]) == (REQUESTS, 0)  # feedback is not
    assert (seen["challenger"]["requests"], seen["challenger"]["shadowRequests"]) == (REQUESTS, REQUESTS)
    assert (seen["champion"]["modelVersion"], seen["challenger"]["modelVersion"]) == (1, 2)


def test_compare_refuses_bad_parameters_and_is_on_the_sketch_port_only(versions):
    (servers, _, _) = versions
    server = servers["challenger"]
    good = "/v2/models/churn/compare?champion=1&challenger=2&since=0"
    assert httpx.get(f"{server.sketch_url}{good}").status_code == 200
    assert httpx.get(f"{server.url}{good}").status_code == 404
    for query, names in (("champion=1&challenger=2", "?since="), ("champion=1&since=0", "?challenger="),
                         ("champion=x&challenger=2&since=0", "?champion="),
                         ("champion=2&challenger=2&since=0", "both version 2")):
        answer = httpx.get(f"{server.sketch_url}/v2/models/churn/compare?{query}")
        assert answer.status_code == 400 and names in answer.json()["error"], query


def test_compare_of_regressors_gives_the_paired_absolute_error_differences(versions):
    """A regressor's answer: the output distance (null when infinite: here the champion, a version written
    straight into the store, predicts one value for every row) and [n, mean, sd] of |e_challenger| - |e_champion|
    on the labelled rows."""
    (servers, _, store) = versions
    prices = servers["prices"]
    since = int(time.time() * 1000)
    rows = price_frame(rows=30, seed=22)
    body = v2_columns({c: rows[c].tolist() for c in ("size", "rooms")})
    answer = httpx.post(f"{prices.url}/v2/models/prices/infer", json={**body, "id": "reg"}, timeout=10)
    predicted = np.asarray(answer.json()["outputs"][0]["data"], float)
    ids = [f"reg:{r}" for r in range(len(rows))]
    truth = rows["price"].to_numpy()
    constant = segment(ids, 7, values=[300.0] * len(ids), start=since + 1)
    key = records.segment_key(records.PREDICTIONS, since + 1, "handmade", 0)
    (store / key).parent.mkdir(parents=True, exist_ok=True)
    (store / key).write_bytes(records.encode(constant))
    labelled = 20
    feedback = {"ids": ids[:labelled], "targets": truth[:labelled].tolist()}
    wait_until(lambda: httpx.post(f"{prices.url}/v2/models/prices/feedback", json=feedback).status_code == 200)

    url = f"{prices.sketch_url}/v2/models/prices/compare?champion=7&challenger=1&since={since}"
    wait_until(lambda: httpx.get(url).json()["rows"] == len(ids))
    got = httpx.get(url).json()
    differences = np.abs(predicted[:labelled] - truth[:labelled]) - np.abs(300.0 - truth[:labelled])
    assert got["rows"] == len(ids) and got["agreed"] is None and got["outputDistance"] is None
    assert (got["championOnlyRight"], got["challengerOnlyRight"]) == (0, 0)
    n, mean, sd = got["lossDifferences"]
    assert n == labelled and mean == pytest.approx(differences.mean()) and sd == pytest.approx(differences.std(ddof=1))
    paired = parse_paired(got, champion=7, challenger=1)
    assert paired.output_distance is None and paired.loss_differences == (n, mean, sd)

