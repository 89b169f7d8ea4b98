"""Adaptive batching: concurrent requests share one prediction call, within max batch size and max wait."""
from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Sequence

import httpx
import pytest

from modelloop_server.batching import Batcher, Job

from .conftest import ServerProcess, v2_columns


def test_concurrent_requests_are_merged_into_one_prediction_call(churn: ServerProcess) -> None:
    requests = 12
    sum_before = churn.metric("modelloop_server_batch_requests_sum")
    count_before = churn.metric("modelloop_server_batch_requests_count")
    rows_before = churn.metric("modelloop_server_batch_rows_sum")
    body = v2_columns({"tenure": [5.0, 6.0], "spend": [40.0, 50.0], "plan": ["plus", "basic"], "region": [1, 2]},
                      {"plan": "BYTES", "region": "INT64"})

    async def send_all() -> list[int]:
        async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=requests)) as client:
            responses = await asyncio.gather(*[
                client.post(f"{churn.url}/v2/models/churn-model/infer", json=body) for _ in range(requests)])
        return [r.status_code for r in responses]

    assert asyncio.run(send_all()) == [200] * requests
    merged = churn.metric("modelloop_server_batch_requests_sum") - sum_before
    calls = churn.metric("modelloop_server_batch_requests_count") - count_before
    assert merged == requests
    assert calls < requests / 2, f"{requests} concurrent requests took {calls} prediction calls"
    assert churn.metric("modelloop_server_batch_rows_sum") - rows_before == 2 * requests


# -- the Batcher on its own ---------------------------------------------------------------------------

class Recorder:
    """A prediction function that records each batch (as the list of its jobs' rows) and echoes rows."""

    def __init__(self, seconds: float = 0.0, fail: bool = False) -> None:
        self.batches: list[list[Any]] = []
        self.seconds, self.fail = seconds, fail

    def __call__(self, jobs: Sequence[Job]) -> list[Any]:
        self.batches.append([job.rows for job in jobs])
        time.sleep(self.seconds)
        if self.fail:
            raise RuntimeError("model exploded")
        return [job.rows for job in jobs]


def run_batcher(recorder: Recorder, scenario: Any, *, max_batch_size: int = 8, max_wait: float = 0.0) -> Any:
    async def main() -> Any:
        batcher = Batcher(max_batch_size=max_batch_size, max_wait=max_wait, run=recorder)
        batcher.start()
        try:
            return await scenario(batcher)
        finally:
            await batcher.close()
    return asyncio.run(main())


def test_a_batch_never_holds_more_than_max_batch_size_rows() -> None:
    recorder = Recorder()

    async def scenario(batcher: Batcher) -> list[Any]:
        return await asyncio.gather(*[batcher.submit(f"r{i}", 3) for i in range(5)])

    assert run_batcher(recorder, scenario, max_batch_size=7, max_wait=0.05) == [f"r{i}" for i in range(5)]
    assert [len(b) for b in recorder.batches] == [2, 2, 1]


def test_a_lone_client_is_never_kept_waiting() -> None:
    recorder = Recorder()

    async def scenario(batcher: Batcher) -> float:
        started = time.monotonic()
        for name in "abc":
            await batcher.submit(name, 1)
        return time.monotonic() - started

    assert run_batcher(recorder, scenario, max_wait=0.5) < 0.2
    assert recorder.batches == [["a"], ["b"], ["c"]]


def test_after_concurrent_requests_an_idle_predictor_waits_for_as_many_again() -> None:
    recorder = Recorder()

    async def scenario(batcher: Batcher) -> float:
        await asyncio.gather(batcher.submit("a", 1), batcher.submit("b", 1))  # two clients at once
        started = time.monotonic()
        first = asyncio.ensure_future(batcher.submit("c", 1))
        await asyncio.sleep(0.05)
        await asyncio.gather(first, batcher.submit("d", 1))
        return time.monotonic() - started

    elapsed = run_batcher(recorder, scenario, max_wait=1.0)
    assert recorder.batches == [["a", "b"], ["c", "d"]]
    assert elapsed < 0.5  # "d" closed the batch; it did not wait the whole second


def test_the_wait_for_company_never_exceeds_max_wait_and_expectations_drop() -> None:
    recorder = Recorder()

    async def scenario(batcher: Batcher) -> list[float]:
        await asyncio.gather(*[batcher.submit(f"x{i}", 1) for i in range(4)])
        waits = []
        for name in ("alone", "alone-again"):
            started = time.monotonic()
            await batcher.submit(name, 1)
            waits.append(time.monotonic() - started)
        return waits

    first, second = run_batcher(recorder, scenario, max_wait=0.15)
    assert 0.14 <= first < 0.6  # expected company that never came: waited max_wait
    assert second < 0.1  # and no longer expects any


def test_a_full_batch_does_not_wait() -> None:
    recorder = Recorder()

    async def scenario(batcher: Batcher) -> float:
        started = time.monotonic()
        await asyncio.gather(batcher.submit("a", 4), batcher.submit("b", 4))
        return time.monotonic() - started

    assert run_batcher(recorder, scenario, max_batch_size=8, max_wait=5.0) < 1.0
    assert recorder.batches == [["a", "b"]]


def test_with_zero_wait_a_lone_request_is_predicted_at_once() -> None:
    recorder = Recorder()

    async def scenario(batcher: Batcher) -> float:
        started = time.monotonic()
        await batcher.submit("a", 1)
        return time.monotonic() - started

    assert run_batcher(recorder, scenario, max_wait=0.0) < 0.05


def test_requests_arriving_while_the_predictor_is_busy_form_the_next_batch() -> None:
    recorder = Recorder(seconds=0.1)

    async def scenario(batcher: Batcher) -> None:
        first = asyncio.ensure_future(batcher.submit("a", 1))
        await asyncio.sleep(0.03)  # "a" is being predicted now
        await asyncio.gather(first, batcher.submit("b", 1), batcher.submit("c", 1))

    run_batcher(recorder, scenario)
    assert recorder.batches == [["a"], ["b", "c"]]


def test_a_request_larger_than_max_batch_size_runs_alone() -> None:
    recorder = Recorder()

    async def scenario(batcher: Batcher) -> None:
        await asyncio.gather(batcher.submit("big", 20), batcher.submit("small", 1))

    run_batcher(recorder, scenario, max_batch_size=8)
    assert recorder.batches == [["big"], ["small"]]


def test_a_failing_prediction_fails_its_requests_and_the_batcher_keeps_going() -> None:
    recorder = Recorder(fail=True)

    async def scenario(batcher: Batcher) -> Any:
        with pytest.raises(RuntimeError, match="model exploded"):
            await batcher.submit("a", 1)
        recorder.fail = False
        return await batcher.submit("b", 1)

    assert run_batcher(recorder, scenario) == "b"


def test_predictions_run_on_one_worker_thread_off_the_event_loop() -> None:
    threads: set[int] = set()

    def run(jobs: Sequence[Job]) -> list[None]:
        threads.add(threading.get_ident())
        return [None] * len(jobs)

    async def scenario(batcher: Batcher) -> None:
        batcher.run = run
        for _ in range(5):
            await batcher.submit("x", 1)

    run_batcher(Recorder(), scenario)
    assert len(threads) == 1 and threading.get_ident() not in threads
