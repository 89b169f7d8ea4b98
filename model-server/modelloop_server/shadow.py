"""Shadow copies: the champion server copies a sampled fraction of its inference requests to the challenger
(docs/challenger.md), without the user's request ever waiting for, or failing because of, the challenger.

- **Sampling** by a hash of the request id (`sampled`): a retried request samples the same way on any replica,
  and the copy carries the id (`X-Request-Id`), so both versions record their prediction under the same id and
  the labels fed back later judge both on the same rows.
- **Cost on the champion** is an append to a bounded queue after the answer is computed. A few sender tasks
  keep one keep-alive HTTP/1.1 connection each to the challenger and send one copy at a time; responses are
  parsed (httptools, the server's own parser) and discarded.
- **Dropped, and counted, never queued without bound**: when the queue is full (the challenger is slower than
  the copies), while the challenger is unreachable (a back-off after a refused connection), and when a copy
  times out (the connection is closed and reopened). `outcomes()` gives the counts by outcome.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import Counter, deque
from typing import Callable

import httptools

log = logging.getLogger("modelloop.server")
OUTCOMES = ("sent", "busy", "unreachable", "timeout", "failed")
SHADOW_HEADER = b"x-modelloop-shadow"  # a copy says so; the challenger never copies a copy


def sampled(request_id: str, fraction: float) -> bool:
    """Whether a request is copied: its id's hash, uniform on [0, 1), below the fraction."""
    if fraction >= 1.0:
        return True
    if fraction <= 0.0:
        return False
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * 2**64


class ShadowMirror:
    def __init__(self, host: str, port: int, fraction: float, *, senders: int = 4, max_queued: int = 256,
                 timeout: float = 1.0, backoff: float = 1.0, max_backoff: float = 30.0,
                 on_outcome: Callable[[str, int], None] | None = None):
        self.host, self.port, self.fraction = host, port, fraction
        self.senders, self.max_queued, self.timeout = senders, max_queued, timeout
        # The wait after a failed connection doubles while the challenger stays unreachable (a champion with no
        # challenger, between analyses, tries once every max_backoff seconds) and is `backoff` again once one
        # connection succeeds: a challenger that comes up gets copies within max_backoff seconds.
        self.backoff = self.min_backoff = backoff
        self.max_backoff = max(backoff, max_backoff)
        self.on_outcome = on_outcome or (lambda outcome, n: None)
        self.counts: Counter[str] = Counter()
        self._queue: deque[bytes] = deque()
        self._wake: asyncio.Event | None = None
        self._down_until = 0.0
        self._tasks: list[asyncio.Task] = []
        self._host_header = f"{host}:{port}".encode()

    # -- the request path (event loop) ------------------------------------------------------------------

    def copy(self, path: str, body: bytes, request_id: str, content_type: bytes = b"application/json",
             extra_headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        """Queue a copy of an answered request when its id is sampled; drop it (counted) when the queue is full
        or the challenger is backing off. Never blocks, never raises."""
        if not sampled(request_id, self.fraction):
            return
        loop_time = asyncio.get_running_loop().time()
        if loop_time < self._down_until:
            self._count("unreachable")
            return
        if len(self._queue) >= self.max_queued:
            self._count("busy")
            return
        head = b"".join([b"POST ", path.encode(), b" HTTP/1.1\r\nhost: ", self._host_header,
                         b"\r\ncontent-type: ", content_type, b"\r\nx-request-id: ", request_id.encode(),
                         b"\r\n", SHADOW_HEADER, b": 1\r\n",
                         *(name + b": " + value + b"\r\n" for name, value in extra_headers),
                         b"content-length: ", str(len(body)).encode(), b"\r\n\r\n"])
        self._queue.append(head + body)
        if self._wake is not None:
            self._wake.set()

    # -- the senders -------------------------------------------------------------------------------------

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._tasks = [asyncio.create_task(self._send_loop(), name=f"shadow-{i}") for i in range(self.senders)]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    def outcomes(self) -> dict[str, int]:
        return {outcome: self.counts[outcome] for outcome in OUTCOMES}

    def _back_off(self, now: float) -> None:
        """The challenger cannot be reached: drop the copy at hand and every queued one, and drop new ones for
        `backoff` seconds."""
        self._down_until = now + self.backoff
        self.backoff = min(self.max_backoff, self.backoff * 2)
        self._count("unreachable", 1 + len(self._queue))
        self._queue.clear()

    def _count(self, outcome: str, n: int = 1) -> None:
        self.counts[outcome] += n
        self.on_outcome(outcome, n)

    async def _send_loop(self) -> None:
        assert self._wake is not None
        connection: _Connection | None = None
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not self._queue:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                request = self._queue.popleft()
                if connection is None:
                    try:
                        connection = await asyncio.wait_for(_Connection.open(self.host, self.port), self.timeout)
                    except OSError:  # refused, unroutable or timed out (a TimeoutError is an OSError)
                        self._back_off(loop.time())
                        continue
                    self.backoff = self.min_backoff
                try:
                    await asyncio.wait_for(connection.exchange(request), self.timeout)
                    self._count("sent")
                except asyncio.TimeoutError:  # first: since Python 3.11 it is the builtin, an OSError
                    self._count("timeout")
                    connection = _close(connection)
                except (OSError, asyncio.IncompleteReadError, httptools.HttpParserError) as exc:
                    self._count("failed")  # a connection the challenger closed, a reset, a malformed answer
                    log.debug("shadow.copy-failed", extra={"fields": {"error": str(exc)}})
                    connection = _close(connection)
        finally:
            _close(connection)


def _close(connection: _Connection | None) -> None:
    if connection is not None:
        connection.writer.close()
    return None


class _Connection:
    """One keep-alive HTTP/1.1 connection: write a request, read its whole response, discard it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self._complete = False
        self.parser = httptools.HttpResponseParser(self)

    @classmethod
    async def open(cls, host: str, port: int) -> _Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    def on_message_complete(self) -> None:  # httptools callback
        self._complete = True

    async def exchange(self, request: bytes) -> None:
        self.writer.write(request)
        await self.writer.drain()
        self._complete = False
        while not self._complete:
            data = await self.reader.read(65536)
            if not data:
                raise asyncio.IncompleteReadError(b"", None)
            self.parser.feed_data(data)
