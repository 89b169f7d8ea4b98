"""A bounded, thread-safe least-recently-used cache: what the controllers remember between reconciles
(verified artifact metadata) never grows with the number of resources or requests, in entries nor, when
given a size, in bytes."""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    """At most `max_entries` entries and, with `size` (the bytes one value holds), at most `max_bytes` in all:
    the least recently used go first, and a value bigger than `max_bytes` alone is not kept."""

    def __init__(self, max_entries: int, max_bytes: int | None = None, size: Callable[[V], int] | None = None):
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        if (max_bytes is None) != (size is None):
            raise ValueError("max_bytes and size go together")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._size = size
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key][0]

    def put(self, key: K, value: V) -> None:
        nbytes = self._size(value) if self._size is not None else 0
        with self._lock:
            self._forget(key)
            if self.max_bytes is not None and nbytes > self.max_bytes:
                return
            self._items[key] = (value, nbytes)
            self._bytes += nbytes
            while len(self._items) > self.max_entries or (self.max_bytes is not None and self._bytes > self.max_bytes):
                _, (_, gone) = self._items.popitem(last=False)
                self._bytes -= gone

    def discard(self, predicate: Callable[[K], bool]) -> int:
        """Forget every entry whose key satisfies `predicate`; how many were forgotten."""
        with self._lock:
            gone = [k for k in self._items if predicate(k)]
            for k in gone:
                self._forget(k)
            return len(gone)

    @property
    def nbytes(self) -> int:
        """What the entries hold, as `size` measures it (0 without)."""
        with self._lock:
            return self._bytes

    def _forget(self, key: K) -> None:
        entry = self._items.pop(key, None)
        if entry is not None:
            self._bytes -= entry[1]

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
