"""Structured log lines (key=value, one per event) on stderr for the trainer process."""
from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

logger = logging.getLogger("modelloop.training")


def log_event(event: str, *, level: int = logging.INFO, **fields: Any) -> None:
    logger.log(level, event, extra={"fields": fields})


class KeyValueFormatter(logging.Formatter):
    """`ts=... level=info event=dataset.read rows=150 uri=s3://...`; values with spaces are quoted."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        pairs = {"ts": stamp, "level": record.levelname.lower(), "event": record.getMessage()}
        if record.name not in ("modelloop.training", "root"):
            pairs["logger"] = record.name
        pairs.update(getattr(record, "fields", {}))
        if record.exc_info:
            pairs["traceback"] = self.formatException(record.exc_info)
        return " ".join(f"{key}={_value(value)}" for key, value in pairs.items() if value is not None)


def _value(value: Any) -> str:
    if isinstance(value, float):
        value = f"{value:.6g}"
    text = str(value)
    if text == "" or any(c in text for c in ' "=\n\t'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t") + '"'
    return text


def configure_logging(stream: TextIO | None = None, level: int = logging.INFO) -> None:
    """Route the process's logs and warnings (sklearn, pandas) to key=value lines on `stream` (stderr)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.captureWarnings(True)
