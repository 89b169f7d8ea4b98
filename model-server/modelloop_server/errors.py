"""The one error type a handler raises for a client's mistake: it becomes a 4xx with {"error": message}."""
from __future__ import annotations


class ClientError(Exception):
    """A request the server cannot serve because of the request itself; `status` is a 4xx."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def bad_request(message: str) -> ClientError:
    return ClientError(400, message)
