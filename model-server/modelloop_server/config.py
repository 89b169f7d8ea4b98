"""The server's settings: command-line flags, each with an environment variable the pod template sets.

Defaults for batching and the body limit come from `modelloop.api.deployment.ServerSpec`, the one
place the operator and the server agree on them.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Sequence

from modelloop.api.deployment import SERVER_PORT, SKETCH_PORT, ServerSpec

_SPEC_DEFAULTS = ServerSpec()

# Longest uvicorn waits, after the drain period, for in-flight requests before cancelling them.
# Kubernetes' default terminationGracePeriodSeconds is 30: drain (5) + this stays under it.
GRACEFUL_TIMEOUT_SECONDS = 20.0


@dataclass(frozen=True)
class ServerConfig:
    model_uri: str
    model_name: str | None = None
    host: str = "0.0.0.0"
    port: int = SERVER_PORT
    sketch_port: int = SKETCH_PORT
    max_batch_size: int = _SPEC_DEFAULTS.max_batch_size
    max_batch_wait_ms: float = _SPEC_DEFAULTS.max_batch_wait_ms
    max_body_bytes: int = _SPEC_DEFAULTS.max_body_bytes
    drain_seconds: float = 5.0
    log_level: str = "info"


# flag -> (environment variable, type, help). The environment variable is the flag's default.
_OPTIONS: dict[str, tuple[str, type, str]] = {
    "model_uri": ("MODELLOOP_MODEL_URI", str,
                  "artifact version to serve: <output>/v<N> (s3://, file://, pvc://)"),
    "model_name": ("MODELLOOP_MODEL_NAME", str,
                   "name in /v2/models/{name} (default: the training name in metadata.json)"),
    "host": ("MODELLOOP_POD_IP", str, "address to listen on (default 0.0.0.0)"),
    "port": ("MODELLOOP_PORT", int, f"port to listen on (default {SERVER_PORT})"),
    "sketch_port": ("MODELLOOP_SKETCH_PORT", int,
                    f"port of the live sketches (/sketch), apart from the inference port so that a NetworkPolicy "
                    f"can open it to the operator only (default {SKETCH_PORT})"),
    "max_batch_size": ("MODELLOOP_MAX_BATCH_SIZE", int,
                       f"most rows merged into one predict call (default {_SPEC_DEFAULTS.max_batch_size})"),
    "max_batch_wait_ms": ("MODELLOOP_MAX_BATCH_WAIT_MS", float,
                          "longest a request waits, while the predictor is idle, for others to join its "
                          f"batch (default {_SPEC_DEFAULTS.max_batch_wait_ms:g}; 0 = never wait)"),
    "max_body_bytes": ("MODELLOOP_MAX_BODY_BYTES", int,
                       f"largest request body; bigger gets 413 (default {_SPEC_DEFAULTS.max_body_bytes})"),
    "drain_seconds": ("MODELLOOP_DRAIN_SECONDS", float,
                      "after SIGTERM: seconds to keep serving while not ready, before shutting down (default 5)"),
    "log_level": ("MODELLOOP_LOG_LEVEL", str, "debug, info, warning or error (default info)"),
}


def parse_config(argv: Sequence[str] | None = None, environ: dict[str, str] | None = None) -> ServerConfig:
    """Flags win over environment variables, which win over the defaults."""
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="modelloop-serve",
        description="Serve one modelloop artifact version over the Open Inference Protocol (V2) and V1 REST.")
    for field, (env, kind, help_text) in _OPTIONS.items():
        parser.add_argument("--" + field.replace("_", "-"), dest=field, type=kind, default=None,
                            help=f"{help_text} [env {env}]")
    args = parser.parse_args(argv)

    values: dict[str, object] = {}
    for field, (env, kind, _) in _OPTIONS.items():
        value = getattr(args, field)
        if value is None and environ.get(env, "") != "":
            try:
                value = kind(environ[env])
            except ValueError:
                parser.error(f"environment variable {env}={environ[env]!r} is not a valid {kind.__name__}")
        if value is not None:
            values[field] = value
    if "model_uri" not in values:
        parser.error("the model to serve is required: --model-uri <output>/v<N> or MODELLOOP_MODEL_URI")
    config = ServerConfig(**values)  # type: ignore[arg-type]
    _check(parser, config)
    return config


def _check(parser: argparse.ArgumentParser, config: ServerConfig) -> None:
    if config.max_batch_size < 1:
        parser.error(f"--max-batch-size {config.max_batch_size} must be at least 1")
    if config.max_batch_wait_ms < 0:
        parser.error(f"--max-batch-wait-ms {config.max_batch_wait_ms:g} must be 0 or more")
    if config.max_body_bytes < 1:
        parser.error(f"--max-body-bytes {config.max_body_bytes} must be at least 1")
    if config.drain_seconds < 0:
        parser.error(f"--drain-seconds {config.drain_seconds:g} must be 0 or more")
    if not 0 <= config.port <= 65535:
        parser.error(f"--port {config.port} must be between 0 and 65535")
    if not 0 < config.sketch_port <= 65535 or config.sketch_port == config.port:
        parser.error(f"--sketch-port {config.sketch_port} must be between 1 and 65535 and differ from --port")
    if config.log_level.lower() not in ("debug", "info", "warning", "error"):
        parser.error(f"--log-level {config.log_level!r} must be one of debug, info, warning, error")
