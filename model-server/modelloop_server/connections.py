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

Body read time is bounded in the application (app.py), which knows when it waits for a body.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

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


class HeadersTooLarge(Exception):
    """Raised from a parser callback to stop parsing; uvicorn then calls send_400_response."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    header_timeout: float = 10.0
    max_header_bytes: int = 65_536
    on_refused: Callable[[str], None] = staticmethod(lambda limit: None)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._awaiting_headers = True
        self._header_bytes = 0  # bytes read while the current request's headers are incomplete
        self._header_size = 0  # size of the current request's line and headers, as parsed
        self._too_large = False
        self._header_deadline: asyncio.TimerHandle | None = None
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._awaiting_headers:
            self._header_bytes += len(data)
        super().data_received(data)
        if self._awaiting_headers and self._header_bytes > self.max_header_bytes:
            self._refuse("header_bytes", f"the request line and headers exceed {self.max_header_bytes} bytes")

    # -- parser callbacks ---------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_size = 0
        self._arm_header_deadline()

    def on_url(self, url: bytes) -> None:
        self._header_size += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_size += len(name) + len(value) + 4  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self._disarm_header_deadline()
        if self._header_size > self.max_header_bytes:
            self._too_large = True
            raise HeadersTooLarge()
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        if self._too_large:  # our HeadersTooLarge, seen by uvicorn as a parser error
            self._refuse("header_bytes", f"the request line and headers exceed {self.max_header_bytes} bytes")
        else:
            super().send_400_response(msg)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._awaiting_headers = True  # what comes next on this connection is the next request's headers
        self._header_bytes = 0

    # -- limits -------------------------------------------------------------------------------------

    def _arm_header_deadline(self) -> None:
        if self._header_deadline is None:
            self._header_deadline = self.loop.call_later(self.header_timeout, self._header_deadline_passed)

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _header_deadline_passed(self) -> None:
        self._header_deadline = None
        if self._awaiting_headers:
            self._refuse("header_timeout", f"the request headers did not arrive within {self.header_timeout:g} s")

    def _refuse(self, limit: str, message: str) -> None:
        """Answer with a JSON error and close: the connection is in no state for another request."""
        if self.transport.is_closing():
            return
        self._disarm_header_deadline()
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
