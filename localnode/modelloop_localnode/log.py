"""Structured logging: one `key=value` line per event on stderr."""
from __future__ import annotations

import sys
import threading
import time

_lock = threading.Lock()


def _format(value: object) -> str:
    text = str(value)
    if text == "" or any(ch in text for ch in ' "=\n\t'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


def log(event: str, level: str = "info", **fields: object) -> None:
    """Write `ts=... level=... event=... k=v ...`; fields set to None are left out."""
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
    parts = [f"ts={stamp}", f"level={level}", f"event={event}"]
    parts += [f"{key}={_format(value)}" for key, value in fields.items() if value is not None]
    with _lock:
        print(" ".join(parts), file=sys.stderr, flush=True)
