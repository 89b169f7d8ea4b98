"""Structured log lines of the server: one key=value line per event, in the trainer's format."""
from __future__ import annotations

import logging
from typing import Any

from modelloop.runtime import configure_logging  # noqa: F401 - re-exported for cli

logger = logging.getLogger("modelloop.server")


def log_event(event: str, *, level: int = logging.INFO, **fields: Any) -> None:
    logger.log(level, event, extra={"fields": fields})
