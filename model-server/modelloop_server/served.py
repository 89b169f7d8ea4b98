"""What this server served, minute by minute, over the last 24 hours: the inference requests (V2 infer and V1
predict, answered or refused), how many were server errors (5xx), client errors (4xx) and shadow copies (they
carried X-Modelloop-Shadow), and their latency over the buckets of the Prometheus histogram. The operator's
champion/challenger analysis reads a window of it, `GET /v2/models/{name}/served?since=<epoch ms>` on the sketch
port (docs/challenger.md, "What the operator reads"), without needing a Prometheus.

- **Hot path**: the current minute's counts are a Python list (an increment there is several times cheaper than
  numpy's item access); when the minute changes they move into a ring of 1,440 minutes (numpy, one row a minute:
  19 int64 with the default buckets, 219 KiB in all). Memory is fixed, whatever the traffic.
- **Reading** sums the ring's minutes since `since` and the current one (~20 us).
- **One thread**: `observe` is called from `ModelServerApp._http` and `window` from the /served handler, both on
  the event loop (the sketch port's listener runs on the same loop), so nothing is locked.
- **The clock** moves forward only: a request compares the clock with the end of the current minute (one float
  comparison); a wall clock stepped back keeps counting into the current minute rather than overwriting a minute
  already moved into the ring.
"""
from __future__ import annotations

import time
from bisect import bisect_left
from typing import Any, Callable, Sequence

import numpy as np

MINUTES = 24 * 60
MINUTE_MS = 60_000
REQUESTS, ERRORS, CLIENT_ERRORS, SHADOW, LATENCY = 0, 1, 2, 3, 4  # columns of a minute; latency buckets from 4


class ServedWindow:
    def __init__(self, bounds: Sequence[float], *, clock: Callable[[], float] = time.time) -> None:
        """`bounds`: the latency buckets' finite upper bounds in seconds, increasing (a last bucket counts the
        rest); `clock`: epoch seconds (injectable for tests)."""
        self.bounds = tuple(float(b) for b in bounds)
        self.clock = clock
        self.width = LATENCY + len(self.bounds) + 1
        self.started_ms = int(clock() * 1000)
        self._ring = np.zeros((MINUTES, self.width), np.int64)
        self._ring_minute = np.full(MINUTES, -1, np.int64)  # the minute (since the epoch) each row holds
        self._minute = self.started_ms // MINUTE_MS  # the minute `_current` counts
        self._ends = (self._minute + 1) * 60.0  # when it ends (epoch s): one float comparison a request
        self._current = [0] * self.width

    def observe(self, status: int, seconds: float, shadow: bool) -> None:
        """One inference request answered with `status` after `seconds`."""
        if self.clock() >= self._ends:
            self._roll()
        current = self._current
        current[REQUESTS] += 1
        if status >= 500:
            current[ERRORS] += 1
        elif status >= 400:
            current[CLIENT_ERRORS] += 1
        if shadow:
            current[SHADOW] += 1
        current[LATENCY + bisect_left(self.bounds, seconds)] += 1  # bucket i: bounds[i-1] < seconds <= bounds[i]

    def window(self, since_ms: int) -> dict[str, Any]:
        """The counts of the minutes from the one containing `since_ms` to now, within the last 24 hours and since
        this window started; `since` is when that count begins (epoch ms)."""
        self._roll()
        now = self._minute
        first = max(since_ms // MINUTE_MS, now - MINUTES + 1, self.started_ms // MINUTE_MS)
        totals = np.zeros(self.width, np.int64)
        if first <= now:
            kept = self._ring_minute >= first  # every minute in the ring is before now
            totals += self._ring[kept].sum(axis=0)
            totals += np.asarray(self._current, np.int64)
        counts = totals.tolist()
        return {"since": max(first * MINUTE_MS, self.started_ms), "requests": counts[REQUESTS],
                "errors": counts[ERRORS], "clientErrors": counts[CLIENT_ERRORS], "shadowRequests": counts[SHADOW],
                "latency": {"bounds": list(self.bounds), "counts": counts[LATENCY:]}}

    def _roll(self) -> None:
        """When the current minute has ended: its counts into the ring, and the clock's minute becomes current."""
        minute = int(self.clock() // 60)
        if minute <= self._minute:
            return
        slot = self._minute % MINUTES
        self._ring[slot] = self._current
        self._ring_minute[slot] = self._minute
        self._minute = minute
        self._ends = (minute + 1) * 60.0
        self._current = [0] * self.width
