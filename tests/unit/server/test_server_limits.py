"""The server under load and abuse: in-flight and queue limits (503 with Retry-After, then recovery),
rows per request, slow or oversized headers and bodies, and 500s that do not echo the exception.

Overload is made deterministic by holding the prediction thread: the served estimator is the real one,
wrapped so that its predict waits for the test to open a gate.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

import httpx
import pytest
from modelloop.artifacts import load_model

from modelloop_server.app import ModelServerApp
from modelloop_server.config import ServerConfig
from modelloop_server.model import ServedModel

from .conftest import Artifact, ServerProcess, serve_in_thread, v2_matrix, free_port

ROW = [5.0, 3.4, 1.5, 0.2]
HANG_GUARD = 20.0  # seconds: only to fail instead of hanging; no assertion is about time


class HeldEstimator:
    """The real estimator; while `gate` is closed, predict waits for it (and says it entered)."""

    def __init__(self, estimator: Any) -> None:
        self.estimator = estimator
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def predict(self, x: Any) -> Any:
        self.entered.set()
        assert self.gate.wait(HANG_GUARD)
        return self.estimator.predict(x)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.estimator, name)


class FailingEstimator(HeldEstimator):
    """Predicts for the warm-up, then fails the way a bug would, with text that must stay in the log."""

    armed = False

    def predict(self, x: Any) -> Any:
        if self.armed:
            raise RuntimeError("secret detail: /var/lib/modelloop/credentials")
        return self.estimator.predict(x)


def served(artifact: Artifact, wrapper: type[HeldEstimator]) -> tuple[ServedModel, HeldEstimator]:
    loaded = load_model(artifact.uri)
    held = wrapper(loaded.model)
    return ServedModel(held, loaded.metadata.wire()), held


@contextmanager
def serving_held(artifact: Artifact, **limits: Any) -> Iterator[tuple[ModelServerApp, HeldEstimator, str]]:
    """The app over real HTTP (in a thread), one prediction per batch, with `limits` set."""
    model, held = served(artifact, HeldEstimator)
    config = ServerConfig(sketch_port=free_port(), model_uri=artifact.uri, max_batch_size=1, max_batch_wait_ms=0, **limits)
    app = ModelServerApp(config, load=lambda: model)
    with serve_in_thread(app) as url:
        wait_until(lambda: httpx.get(f"{url}/v2/health/ready").status_code == 200)
        try:
            yield app, held, url
        finally:
            held.gate.set()


def wait_until(condition: Any) -> None:
    deadline = time.monotonic() + HANG_GUARD
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def hold_the_predictor(url: str, held: HeldEstimator) -> threading.Thread:
    """One request that is inside predict (the worker is busy) when this returns."""
    held.gate.clear()
    held.entered.clear()
    thread = threading.Thread(target=lambda: httpx.post(f"{url}/v2/models/flowers/infer", json=v2_matrix([ROW]),
                                                        timeout=HANG_GUARD))
    thread.start()
    assert held.entered.wait(HANG_GUARD)
    return thread


def test_a_full_prediction_queue_answers_503_with_retry_after_then_recovers(artifacts: dict[str, Artifact]) -> None:
    with serving_held(artifacts["flowers"], max_concurrency=3, max_queue=1) as (app, held, url):
        queue_full_then_recovery(held, url)


def queue_full_then_recovery(held: HeldEstimator, url: str) -> None:
    first = hold_the_predictor(url, held)

    async def two_more() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=HANG_GUARD) as client:
            pending = [asyncio.ensure_future(client.post(f"{url}/v2/models/flowers/infer", json=v2_matrix([ROW])))
                       for _ in range(2)]
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            refused = [task.result() for task in done]  # one waits in the queue (max 1): the other is answered
            held.gate.set()
            return refused + [await task for task in pending if task not in done]

    refused, queued = asyncio.run(two_more())
    first.join(HANG_GUARD)
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "queue is full" in refused.json()["error"] and "--max-queue" in refused.json()["error"]
    assert queued.status_code == 200
    assert httpx.post(f"{url}/v2/models/flowers/infer", json=v2_matrix([ROW])).status_code == 200
    assert 'modelloop_server_refused_total{limit="queue"} 1.0' in httpx.get(f"{url}/metrics").text


def test_inference_beyond_max_concurrency_gets_503_while_health_and_metrics_answer(
        artifacts: dict[str, Artifact]) -> None:
    with serving_held(artifacts["flowers"], max_concurrency=2, max_queue=1) as (app, held, url):
        first = hold_the_predictor(url, held)
        queued = threading.Thread(target=lambda: httpx.post(f"{url}/v2/models/flowers/infer",
                                                            json=v2_matrix([ROW]), timeout=HANG_GUARD))
        queued.start()
        wait_until(lambda: app.inferring == 2)  # one predicting, one waiting: the limit is reached

        over = httpx.post(f"{url}/v2/models/flowers/infer", json=v2_matrix([ROW]))
        assert over.status_code == 503 and over.headers["retry-after"] == "1"
        assert "--max-concurrency" in over.json()["error"]
        assert httpx.get(f"{url}/v2/health/live").status_code == 200  # never counted, never blocked
        assert httpx.get(f"{url}/metrics").status_code == 200
        assert not held.gate.is_set()  # all of this while a prediction is running

        held.gate.set()
        first.join(HANG_GUARD)
        queued.join(HANG_GUARD)
        assert httpx.post(f"{url}/v2/models/flowers/infer", json=v2_matrix([ROW])).status_code == 200
        assert app.inferring == 0


def test_a_server_bug_answers_500_with_a_request_id_and_logs_the_exception(
        artifacts: dict[str, Artifact], caplog: pytest.LogCaptureFixture) -> None:
    model, failing = served(artifacts["flowers"], FailingEstimator)
    app = ModelServerApp(ServerConfig(sketch_port=free_port(), model_uri=artifacts["flowers"].uri, max_batch_wait_ms=0), load=lambda: model)
    with serve_in_thread(app) as url:
        wait_until(lambda: httpx.get(f"{url}/v2/health/ready").status_code == 200)
        failing.armed = True
        with caplog.at_level(logging.ERROR, logger="modelloop.server"):
            response = httpx.post(f"{url}/v2/models/flowers/infer", json=v2_matrix([ROW]))
    request_id = response.headers["x-request-id"]
    assert response.status_code == 500
    assert response.json() == {"error": f"internal error; the server logged it as request {request_id}",
                               "requestId": request_id}
    assert "secret" not in response.text and "RuntimeError" not in response.text
    [record] = [r for r in caplog.records if r.getMessage() == "request.failed"]
    assert record.fields["request_id"] == request_id and "secret detail" in str(record.exc_info[1])


# -- limits of the real process: its HTTP protocol and its flags ----------------------------------------

@pytest.fixture(scope="module")
def guarded(artifacts: dict[str, Artifact], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(["--model-uri", artifacts["flowers"].uri, "--max-batch-wait-ms", "0",
                            "--max-rows", "3", "--header-timeout-seconds", "0.3", "--body-timeout-seconds", "0.3",
                            "--max-header-bytes", "4096"], tmp_path_factory.mktemp("guarded") / "server.log")
    try:
        yield server.start().wait_ready()
    finally:
        server.stop()


def raw_exchange(server: ServerProcess, data: bytes) -> bytes:
    """Send `data` on a fresh connection and read until the server closes it."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=HANG_GUARD) as conn:
        conn.sendall(data)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_more_rows_than_max_rows_get_413_naming_the_cap(guarded: ServerProcess) -> None:
    infer = f"{guarded.url}/v2/models/flowers/infer"
    assert httpx.post(infer, json=v2_matrix([ROW] * 3)).status_code == 200
    response = httpx.post(infer, json=v2_matrix([ROW] * 4))
    assert response.status_code == 413
    assert response.json()["error"] == ("the request holds 4 rows; the limit is 3 rows per request (--max-rows); "
                                        "send them in several requests")
    v1 = httpx.post(f"{guarded.url}/v1/models/flowers:predict", json={"instances": [ROW] * 4})
    assert v1.status_code == 413 and "--max-rows" in v1.json()["error"]


def test_a_connection_that_never_finishes_its_headers_gets_408_and_is_closed(guarded: ServerProcess) -> None:
    answer = raw_exchange(guarded, b"POST /v2/models/flowers/infer HTTP/1.1\r\nhost: x\r\ncontent-ty")
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n") and b"connection: close" in answer
    assert b"did not arrive within 0.3 s" in answer
    assert raw_exchange(guarded, b"").startswith(b"HTTP/1.1 408 ")  # connected, sent nothing
    assert guarded.metric("modelloop_server_refused_total", {"limit": "header_timeout"}) >= 2


def test_headers_larger_than_max_header_bytes_get_431_and_the_connection_closes(guarded: ServerProcess) -> None:
    request = b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\nx-padding: " + b"a" * 8192 + b"\r\n\r\n"
    answer = raw_exchange(guarded, request)
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert b"exceed 4096 bytes" in answer
    unfinished = raw_exchange(guarded, request[:-4])  # still sending headers, already past the cap
    assert unfinished.startswith(b"HTTP/1.1 431 ")
    ok = raw_exchange(guarded, b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200 ")


def test_a_body_that_does_not_arrive_gets_408_and_the_connection_closes(guarded: ServerProcess) -> None:
    head = (b"POST /v2/models/flowers/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 100\r\n\r\n{\"inputs\": [")
    answer = raw_exchange(guarded, head)
    assert answer.startswith(b"HTTP/1.1 408 ") and b"connection: close" in answer
    assert b"--body-timeout-seconds" in answer
    assert guarded.metric("modelloop_server_refused_total", {"limit": "body_timeout"}) >= 1


def test_a_kept_alive_connection_serves_request_after_request(guarded: ServerProcess) -> None:
    # The header deadline runs per request, from its first byte: a reused connection is not cut off.
    with httpx.Client(timeout=HANG_GUARD) as client:
        for _ in range(3):
            assert client.post(f"{guarded.url}/v2/models/flowers/infer", json=v2_matrix([ROW])).status_code == 200
            time.sleep(0.4)  # longer than the header timeout, shorter than keep-alive (5 s)


# -- the same limits on a kept-alive connection's later requests (one deadline timer per connection) ---------

INFER = (b"POST /v2/models/flowers/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
         b"content-length: %d\r\n\r\n")
BODY = b'{"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 4], "data": [[5.0, 3.4, 1.5, 0.2]]}]}'


def read_response(conn: socket.socket, pending: bytearray) -> bytes:
    """One response (headers and a content-length body) from `conn`; bytes past it stay in `pending`."""
    while b"\r\n\r\n" not in pending:
        chunk = conn.recv(65536)
        assert chunk, f"closed before a whole response: {bytes(pending)!r}"
        pending += chunk
    head, _, _ = bytes(pending).partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    end = len(head) + 4 + length
    while len(pending) < end:
        chunk = conn.recv(65536)
        assert chunk, "closed within a response body"
        pending += chunk
    response = bytes(pending[:end])
    del pending[:end]
    return response


def read_to_close(conn: socket.socket, pending: bytearray) -> bytes:
    while chunk := conn.recv(65536):
        pending += chunk
    return bytes(pending)


@pytest.mark.parametrize("pause", [0.0, 0.4], ids=["at-once", "after-idling-past-the-timeout"])
def test_a_later_request_that_never_finishes_its_headers_gets_408(guarded: ServerProcess, pause: float) -> None:
    # at once: the deadline timer of the first request is still pending and must move to the second's;
    # after idling: it lapsed, and the second request's first byte must arm it again.
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=HANG_GUARD) as conn:
        pending = bytearray()
        conn.sendall(INFER % len(BODY) + BODY)
        assert read_response(conn, pending).startswith(b"HTTP/1.1 200 ")
        time.sleep(pause)
        conn.sendall(b"POST /v2/models/flowers/infer HTTP/1.1\r\nhost: x\r\ncontent-ty")
        answer = read_to_close(conn, pending)
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n") and b"did not arrive within 0.3 s" in answer


def test_later_and_pipelined_requests_are_held_to_max_header_bytes(guarded: ServerProcess) -> None:
    padding = b"x-padding: " + b"a" * 8192 + b"\r\n"
    # a kept-alive connection's second request, complete or still sending its headers
    for second in (b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n" + padding + b"\r\n",
                   b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n" + padding):
        with socket.create_connection(("127.0.0.1", guarded.port), timeout=HANG_GUARD) as conn:
            pending = bytearray()
            conn.sendall(INFER % len(BODY) + BODY)
            assert read_response(conn, pending).startswith(b"HTTP/1.1 200 ")
            conn.sendall(second)
            assert read_to_close(conn, pending).startswith(b"HTTP/1.1 431 ")
    # pipelined, both requests in one write: the second is never served and the connection closes (with the
    # first's response still being written, the refusal is not interleaved with it: the connection just ends)
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=HANG_GUARD) as conn:
        conn.sendall(INFER % len(BODY) + BODY + b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n" + padding + b"\r\n")
        answer = read_to_close(conn, bytearray())
    assert answer.count(b"HTTP/1.1 ") <= 1  # the first request's answer at most
    # and pipelined requests within the cap are all answered
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=HANG_GUARD) as conn:
        pending = bytearray()
        conn.sendall((INFER % len(BODY) + BODY) * 3)
        assert all(read_response(conn, pending).startswith(b"HTTP/1.1 200 ") for _ in range(3))


def test_a_body_that_arrives_in_parts_within_the_timeout_is_answered(guarded: ServerProcess) -> None:
    # the body is not all there when the app reads it: its read is timed, and it arrives in time
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=HANG_GUARD) as conn:
        pending = bytearray()
        conn.sendall(INFER % len(BODY) + BODY[:10])
        time.sleep(0.05)
        conn.sendall(BODY[10:])
        assert read_response(conn, pending).startswith(b"HTTP/1.1 200 ")


def test_body_received_is_false_for_a_receive_it_cannot_look_into() -> None:
    from modelloop_server.connections import body_received

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    assert body_received(receive) is False  # the app then times the read, as for a late body
