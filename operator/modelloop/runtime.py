"""What the two programs of the runtime image (the trainer and the model server) share: structured
log lines (key=value, one per event, on stderr) and the termination message Kubernetes shows in the
pod's status."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
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


TERMINATION_LOG_ENV = "MODELLOOP_TERMINATION_LOG"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
# Kubernetes keeps at most 4096 bytes of a termination message.
TERMINATION_MESSAGE_LIMIT = 4096


def termination_log_path() -> str | None:
    """$MODELLOOP_TERMINATION_LOG, else /dev/termination-log when writable (in a pod), else None."""
    configured = os.environ.get(TERMINATION_LOG_ENV)
    if configured:
        return configured
    return DEFAULT_TERMINATION_LOG if os.access(DEFAULT_TERMINATION_LOG, os.W_OK) else None


def write_termination_message(path: str | None, message: str) -> None:
    """One line, cut to what Kubernetes keeps; an unwritable file is logged, never fatal."""
    if not path:
        return
    line = " ".join(message.split())
    data = line.encode()[:TERMINATION_MESSAGE_LIMIT - 1].decode(errors="ignore") + "\n"
    try:
        Path(path).write_text(data)
    except OSError as exc:
        log_event("termination_log.unwritable", level=logging.WARNING, path=path, error=exc.strerror or str(exc))
