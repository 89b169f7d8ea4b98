"""HTTP connections: uvicorn's httptools protocol with the two limits it lacks.

uvicorn 0.54 bounds the idle time between requests (`timeout_keep_alive`) but not the time a client
takes to send a request's line and headers, nor their size (`h11_max_incomplete_event_size` exists for
the h11 parser only). A client that opens connections and trickles headers would hold them, and the
parser's buffers, forever. Here:

- each connection must deliver the headers of each request within `header_timeout` seconds of its
  first byte (of the connection's opening, for its first request): otherwise 408 and close;
- a request's line and headers may not exceed `max_header_bytes`: otherwise 431 and close. Checked when
  the headers are complete, and after each read while they are not (so the parser never holds more than
  the cap plus one read).

Both cost next to nothing per request, which matters at ~100 us of CPU a request (issue 11, bench/limits):
- the deadline is one timer per connection, not per request. A request's start is noted (`loop.time()`,
  ~0.1 us); the timer, when it fires, refuses the connection if headers are late, re-arms itself for the
  time left if a later request's headers are on their way, and lapses otherwise (the next request arms
  it again). Arming and cancelling a timer per request cost ~2-5 us with uvloop, measured;
- the size is summed from the line and headers uvicorn parsed, and only when the reads that carried
  them were larger than the cap (a request of a few hundred bytes in one read cannot exceed it).

Body read time is bounded in the application (app.py), which knows when it waits for a body;
`body_received` tells it when no wait is left (the whole body is buffered), so that it times only the
bodies still on their way.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from .logs import log_event

# limit name -> status: what a refused connection is answered, and the label it is counted under
LIMITS = {"header_timeout": 408, "header_bytes": 431}
REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


def guarded_protocol(header_timeout: float, max_header_bytes: int,
                     on_refused: Callable[[str], None] = lambda limit: None) -> type[HttpToolsProtocol]:
    """The protocol class to give uvicorn (`Config(http=...)`) for these limits; `on_refused(limit)` is
    called for each connection refused (to count it)."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,),
                {"header_timeout": header_timeout, "max_header_bytes": max_header_bytes,
                 "on_refused": staticmethod(on_refused)})


def body_received(receive: Any) -> bool:
    """Whether the request's whole body has arrived, so that `receive()` returns it without waiting: true
    only for uvicorn's httptools request cycle once it parsed the request to its end. False when that
    cannot be told (another server or protocol): the caller then bounds its wait as for a late body."""
    cycle = getattr(receive, "__self__", None)
    return (isinstance(cycle, RequestResponseCycle) and cycle.more_body is False
            and cycle.message_event.is_set())


_base = HttpToolsProtocol


class HeadersTooLarge(Exception):
    """Raised from a parser callback to stop parsing; uvicorn then calls send_400_response."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    header_timeout: float = 10.0
    max_header_bytes: int = 65_536
    on_refused: Callable[[str], None] = staticmethod(lambda limit: None)

    # Slots, not instance attributes: uvicorn's protocol has 28 of those, and past 30 CPython stops sharing
    # the instance dict's keys, which slows every attribute access of uvicorn's own code (~2% of a request,
    # measured). The hooks call uvicorn's methods directly rather than through super(), which costs an
    # object and a lookup each time.
    __slots__ = ("_since", "_deadline", "_read_size", "_begin_read", "_header_bytes", "_too_large")

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        _base.connection_made(self, transport)
        # When the awaited headers' time started: the connection's opening, then each request's first byte;
        # None from a request's end of headers to the next request's first byte (idle time is keep-alive's).
        self._since: float | None = self.loop.time()
        self._deadline: asyncio.TimerHandle | None = self.loop.call_later(self.header_timeout,
                                                                          self._deadline_passed)
        self._header_bytes = 0  # bytes read for the next or current request's line and headers
        self._read_size = 0  # size of the read being parsed
        self._begin_read = 0  # size of the read in which the current request began
        self._too_large = False

    def connection_lost(self, exc: Exception | None) -> None:
        self._since = None
        self._cancel_deadline()
        _base.connection_lost(self, exc)

    def data_received(self, data: bytes) -> None:
        self._read_size = size = len(data)
        cycle = self.cycle
        # A read counts towards the headers when it comes while they are awaited or after the previous
        # request's end (uvicorn's cycle has its whole body); not while a body arrives.
        if self._since is not None or cycle is None or not cycle.more_body:
            self._header_bytes += size
        _base.data_received(self, data)
        if self._since is not None and self._header_bytes > self.max_header_bytes:  # headers still incomplete
            self._refuse("header_bytes", f"the request line and headers exceed {self.max_header_bytes} bytes")

    # -- parser callbacks ---------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        _base.on_message_begin(self)
        self._begin_read = self._read_size
        if self._since is None:  # (the first request's time runs from the connection's opening)
            self._since = self.loop.time()
            if self._deadline is None:
                self._deadline = self.loop.call_later(self.header_timeout, self._deadline_passed)

    def on_headers_complete(self) -> None:
        self._since = None
        # The line and headers are within the read the request began in and the reads counted since.
        most = self._begin_read + self._header_bytes
        self._header_bytes = 0
        if most > self.max_header_bytes and self._header_size() > self.max_header_bytes:
            self._too_large = True
            raise HeadersTooLarge()
        _base.on_headers_complete(self)

    def send_400_response(self, msg: str) -> None:
        if self._too_large:  # our HeadersTooLarge, seen by uvicorn as a parser error
            self._refuse("header_bytes", f"the request line and headers exceed {self.max_header_bytes} bytes")
        else:
            _base.send_400_response(self, msg)

    # -- limits -------------------------------------------------------------------------------------

    def _header_size(self) -> int:
        """The request's target and headers as parsed (uvicorn keeps them), with ": " and CRLF per header."""
        return len(self.url) + sum([len(name) + len(value) + 4 for name, value in self.headers])

    def _deadline_passed(self) -> None:
        self._deadline = None
        since = self._since
        if since is None:  # no headers awaited now: the timer lapses; the next request's first byte re-arms it
            return
        left = since + self.header_timeout - self.loop.time()
        if left > 0:  # the headers of a request that started after the timer was armed: their own deadline
            self._deadline = self.loop.call_later(left, self._deadline_passed)
        else:
            self._refuse("header_timeout", f"the request headers did not arrive within {self.header_timeout:g} s")

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _refuse(self, limit: str, message: str) -> None:
        """Answer with a JSON error and close: the connection is in no state for another request."""
        if self.transport.is_closing():
            return
        self._since = None
        self._cancel_deadline()
        self.on_refused(limit)
        # one line per connection at debug level: under a flood of slow clients, counting them is enough
        log_event("connection.refused", level=logging.DEBUG, limit=limit, client=_client(self.client))
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # a response is being written on this connection: do not interleave
            return
        status = LIMITS[limit]
        body = orjson.dumps({"error": message})
        self.transport.write(b"".join([
            b"HTTP/1.1 %d %s\r\n" % (status, REASONS[status]), b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body), b"connection: close\r\n\r\n", body]))
        self.transport.close()


def _client(client: Any) -> str:
    return "%s:%d" % client if client else "-"
