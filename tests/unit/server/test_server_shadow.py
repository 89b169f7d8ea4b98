"""Shadow copies (modelloop_server.shadow) against real sockets: a challenger that answers, one that is slow,
one that never answers and one that is not there. The user's side is `copy()`: it must never block or raise,
and every copy must end counted as sent or dropped for a reason."""
from __future__ import annotations

import asyncio
import socket
import time
import uuid

import pytest

from modelloop_server.shadow import OUTCOMES, SHADOW_HEADER, ShadowMirror, sampled


def test_sampling_follows_the_fraction_and_is_the_same_for_the_same_id():
    ids = [uuid.uuid4().hex for _ in range(20000)]
    share = sum(sampled(i, 0.25) for i in ids) / len(ids)
    assert 0.23 < share < 0.27
    assert all(sampled(i, 0.25) == sampled(i, 0.25) for i in ids[:100])  # a retry samples the same way
    assert all(sampled(i, 1.0) for i in ids[:100]) and not any(sampled(i, 0.0) for i in ids[:100])
    inner = {i for i in ids if sampled(i, 0.1)}
    assert inner <= {i for i in ids if sampled(i, 0.5)}  # a larger fraction copies a superset


class Challenger:
    """An HTTP/1.1 keep-alive server on loopback that records each request and answers after `delay` seconds
    (None: never answers)."""

    def __init__(self, delay: float | None = 0.0):
        self.delay, self.requests = delay, []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def handle(self, reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
                body = await reader.readexactly(int(headers["content-length"]))
                self.requests.append((lines[0], headers, body))
                if self.delay is None:
                    await asyncio.sleep(3600)
                await asyncio.sleep(self.delay)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            writer.close()

    async def stop(self):
        self.server.close()


def mirror_run(challenger: Challenger | None, copies: int, **kw) -> tuple[ShadowMirror, Challenger | None]:
    async def main():
        port = await challenger.start() if challenger else free_port()
        mirror = ShadowMirror("127.0.0.1", port, 1.0, **kw)
        mirror.start()
        for i in range(copies):
            mirror.copy("/v2/models/churn/infer", b'{"inputs": []}', f"req-{i}")
            if i % 50 == 0:
                await asyncio.sleep(0)  # the user's requests arrive over time, not in one burst
        for _ in range(200):
            if sum(mirror.counts.values()) >= copies:
                break
            await asyncio.sleep(0.05)
        await mirror.close()
        if challenger:
            await challenger.stop()
        return mirror
    return asyncio.run(main()), challenger


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_copies_reach_the_challenger_with_the_same_id_and_body_marked_as_copies():
    mirror, challenger = mirror_run(Challenger(), 300, senders=2, max_queued=1000)
    assert mirror.outcomes()["sent"] == 300
    line, headers, body = challenger.requests[7]
    assert line == "POST /v2/models/churn/infer HTTP/1.1" and body == b'{"inputs": []}'
    assert headers["x-request-id"] == "req-7" and headers[SHADOW_HEADER.decode()] == "1"
    assert sorted(h["x-request-id"] for _, h, _ in challenger.requests) == sorted(f"req-{i}" for i in range(300))


def test_a_slow_challenger_gets_what_it_can_and_the_rest_is_dropped_as_busy():
    mirror, challenger = mirror_run(Challenger(delay=0.2), 2000, senders=2, max_queued=16, timeout=5.0)
    counts = mirror.outcomes()
    assert counts["busy"] > 1500 and counts["sent"] >= 16
    assert sum(counts.values()) == 2000 and set(counts) == set(OUTCOMES)


def test_a_challenger_that_never_answers_times_out_and_its_connection_is_replaced():
    mirror, challenger = mirror_run(Challenger(delay=None), 6, senders=1, max_queued=100, timeout=0.2)
    assert mirror.outcomes()["timeout"] == 6 and mirror.outcomes()["sent"] == 0


def test_a_challenger_that_is_not_there_is_backed_off_and_nothing_is_raised():
    mirror, _ = mirror_run(None, 500, senders=2, max_queued=1000, backoff=60.0)
    counts = mirror.outcomes()
    assert counts["unreachable"] == 500 and counts["sent"] == 0


@pytest.mark.parametrize("fraction", [0.0, 0.3])
def test_unsampled_requests_are_not_copied_at_all(fraction):
    async def main():
        mirror = ShadowMirror("127.0.0.1", free_port(), fraction, max_queued=1000)
        for i in range(1000):
            mirror.copy("/x", b"{}", f"id-{i}")
        return len(mirror._queue), sum(sampled(f"id-{i}", fraction) for i in range(1000))
    queued, expected = asyncio.run(main())
    assert queued == expected


# ----------------------------------------------------------------------------------------- real servers

def test_a_champion_copies_answered_requests_to_a_challenger_that_records_them_under_the_same_ids(artifacts,
                                                                                                 tmp_path):
    """Two real modelloop-serve processes: the champion copies every answered request (and never a refused one,
    nor a copy); the challenger records its own prediction under the champion's prediction id."""
    import httpx

    from modelloop.outcomes import records
    from tests.unit.server.conftest import ServerProcess, running

    churn = artifacts["churn"]
    challenger = ServerProcess(["--model-uri", churn.uri, "--feedback-uri", f"file://{tmp_path / 'records'}",
                                "--pod-name", "challenger-0"], tmp_path / "challenger.log")
    champion = ServerProcess(["--model-uri", churn.uri, "--shadow-to", f"127.0.0.1:{challenger.port}"],
                             tmp_path / "champion.log")
    rows = {"tenure": 3.0, "spend": 80.0, "plan": "basic", "region": 2}
    body = {"inputs": [{"name": k, "datatype": "BYTES" if isinstance(v, str) else "FP64", "shape": [1],
                        "data": [v]} for k, v in rows.items()]}
    with running({"challenger": challenger, "champion": champion}):
        ids = [f"order-{i}" for i in range(20)]
        for request_id in ids:
            answer = httpx.post(f"{champion.url}/v2/models/churn/infer", json={**body, "id": request_id}, timeout=10)
            assert answer.status_code == 200, answer.text
        refused = httpx.post(f"{champion.url}/v2/models/churn/infer", json={"inputs": []}, timeout=10)
        assert refused.status_code == 400
        for _ in range(100):
            if champion.metric("modelloop_server_shadow_copies_total", {"outcome": "sent"}) >= 20:
                break
            time.sleep(0.05)
        assert champion.metric("modelloop_server_shadow_copies_total", {"outcome": "sent"}) == 20
        assert challenger.metric("modelloop_server_shadow_copies_total", {"outcome": "sent"}) == 0  # not re-copied
    recorded = [row["id"] for path in sorted((tmp_path / "records" / records.PREDICTIONS).rglob("*.parquet"))
                for row in records.decode(path.read_bytes(), records.PREDICTIONS, max_rows=1000).to_pylist()]
    assert sorted(recorded) == sorted(f"{i}:0" for i in ids)


def test_the_wait_after_an_unreachable_challenger_doubles_up_to_its_most_and_resets_on_a_connection():
    """A champion whose challenger is absent (between analyses) tries once every max_backoff seconds, not every
    second; the first connection that succeeds brings the wait back to its least."""
    mirror = ShadowMirror("127.0.0.1", 9, 1.0, backoff=1.0, max_backoff=8.0)
    waits = []
    for _ in range(6):
        mirror._back_off(100.0)
        waits.append(mirror._down_until - 100.0)
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert mirror.counts["unreachable"] == 6
