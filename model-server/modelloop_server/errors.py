"""The one error type a handler raises for a client's mistake: it becomes a 4xx with {"error": message}
(or a 503 when the server is not ready or full, with `Retry-After`)."""
from __future__ import annotations

RETRY_AFTER = (b"retry-after", b"1")


class ClientError(Exception):
    """A request the server cannot serve because of the request itself (or, for 503, of the moment);
    `status` is a 4xx or 503. `close` ends the connection after the answer: the request was not read
    to its end, so nothing else can be read from the connection."""

    def __init__(self, status: int, message: str, *, close: bool = False,
                 headers: tuple[tuple[bytes, bytes], ...] = (), limit: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close
        self.headers = headers
        self.limit = limit  # the server limit that refused the request: modelloop_server_refused_total{limit}


def bad_request(message: str) -> ClientError:
    return ClientError(400, message)


def over_limit(limit: str, message: str, *, close: bool = False) -> ClientError:
    """413: the request is larger than a server limit allows; `message` names the rule and its setting, never
    the refused content."""
    return ClientError(413, message, close=close, limit=limit)


def unavailable(message: str) -> ClientError:
    """503 with Retry-After: the server cannot take the request now; another pod, or a second later, can."""
    return ClientError(503, message, headers=(RETRY_AFTER,))
