"""The server's settings: command-line flags, each with an environment variable the pod template sets.

Defaults for batching and the body limit come from `modelloop.api.deployment.ServerSpec`, the one
place the operator and the server agree on them.
"""
from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from typing import Sequence

from modelloop.api.deployment import SERVER_PORT, SKETCH_PORT, ServerSpec
from modelloop.artifacts.model import RUNTIMES
from modelloop.meta import parse_duration

from .live import DEFAULT_MIN_ROWS as DEFAULT_SKETCH_MIN_ROWS

_SPEC_DEFAULTS = ServerSpec()

# Longest uvicorn waits, after the drain period, for in-flight requests before cancelling them.
# Kubernetes' default terminationGracePeriodSeconds is 30: drain (5) + this stays under it.
GRACEFUL_TIMEOUT_SECONDS = 20.0
SHA256 = re.compile(r"^[0-9a-f]{64}$")


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
    # Digests pinned by the operator (docs/security.md); unset, only metadata.json vouches for the model.
    model_sha256: str | None = None
    metadata_sha256: str | None = None
    # What predicts: model.onnx with onnxruntime, model.skops with scikit-learn, or auto (onnx when present).
    runtime: str = _SPEC_DEFAULTS.runtime
    # Longest one prediction call may take (docs/security.md, "Models that never finish").
    inference_timeout_seconds: float = parse_duration(_SPEC_DEFAULTS.inference_timeout)
    # Limits against load and abuse (docs/server.md, "Limits").
    max_concurrency: int = 128
    max_queue: int = 64
    max_rows: int = 10_000
    max_string_length: int = 1024
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 30.0
    keep_alive_seconds: float = 5.0
    max_header_bytes: int = 65_536
    sketch_min_rows: int = DEFAULT_SKETCH_MIN_ROWS
    # Outcomes (docs/outcomes.md): prediction records and feedback, on when feedback_uri is set.
    feedback_uri: str | None = None
    feedback_max_delay_seconds: float = 7 * 86400.0
    feedback_retention_seconds: float = 30 * 86400.0
    feedback_log_inputs: bool = False
    records_flush_seconds: float = 0.25
    max_feedback_ids: int = 10_000
    pod_name: str = "server"
    # Shadow copies to a challenger (docs/challenger.md): host:port, and the fraction of requests copied.
    shadow_to: str | None = None
    shadow_fraction: float = 1.0


def flag(text: str) -> bool:
    """A boolean setting: true/false, 1/0, yes/no."""
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ValueError(text)


flag.__name__ = "boolean (true or false)"


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
    "model_sha256": ("MODELLOOP_MODEL_SHA256", str,
                     "sha256 the model file must have; the server refuses the version otherwise (the operator "
                     "pins it)"),
    "metadata_sha256": ("MODELLOOP_METADATA_SHA256", str,
                        "sha256 metadata.json must have, checked before it is parsed (the operator pins it)"),
    "runtime": ("MODELLOOP_RUNTIME", str,
                f"what predicts: auto (model.onnx with onnxruntime when the version has one, else model.skops), "
                f"onnx (refuse a version without model.onnx) or sklearn (never load model.onnx) (default "
                f"{_SPEC_DEFAULTS.runtime})"),
    "inference_timeout_seconds": ("MODELLOOP_INFERENCE_TIMEOUT_SECONDS", float,
                                  "longest one prediction call may take: past it, its requests get 504 and an "
                                  "onnxruntime run is cancelled; a scikit-learn call cannot be, so /v2/health/live "
                                  "fails until it returns (spec.server.inferenceTimeout; default "
                                  f"{parse_duration(_SPEC_DEFAULTS.inference_timeout):g})"),
    "max_concurrency": ("MODELLOOP_MAX_CONCURRENCY", int,
                        "most inference requests in flight; more get 503 with Retry-After (default 128)"),
    "max_queue": ("MODELLOOP_MAX_QUEUE", int,
                  "most requests waiting for a prediction call; more get 503 with Retry-After (default 64)"),
    "max_rows": ("MODELLOOP_MAX_ROWS", int, "most rows in one request, counted before their values are read; "
                 "more get 413, and so does a body holding more JSON values than that many rows take "
                 "(default 10000)"),
    "max_string_length": ("MODELLOOP_MAX_STRING_LENGTH", int,
                          "most characters in one text value of a request (a number sent for a text feature "
                          "counts its digits); longer gets 413 (default 1024)"),
    "header_timeout_seconds": ("MODELLOOP_HEADER_TIMEOUT_SECONDS", float,
                               "a connection that has not sent a request's headers within this is answered 408 "
                               "and closed (default 10)"),
    "body_timeout_seconds": ("MODELLOOP_BODY_TIMEOUT_SECONDS", float,
                             "a request whose body has not arrived within this after its headers gets 408 "
                             "(default 30)"),
    "keep_alive_seconds": ("MODELLOOP_KEEP_ALIVE_SECONDS", float,
                           "an idle kept-alive connection is closed after this (default 5)"),
    "max_header_bytes": ("MODELLOOP_MAX_HEADER_BYTES", int,
                         "largest request line and headers; more get 431 and the connection closes "
                         "(default 65536)"),
    "sketch_min_rows": ("MODELLOOP_SKETCH_MIN_ROWS", int,
                        "fewest rows between two published sketches: /sketch serves the previous one until "
                        f"this many more rows were counted (default {DEFAULT_SKETCH_MIN_ROWS})"),
    "feedback_uri": ("MODELLOOP_FEEDBACK_URI", str,
                     "where prediction and label records go (spec.feedback.uri); unset: no records, and "
                     "/v2/models/{name}/feedback answers 404"),
    "feedback_max_delay_seconds": ("MODELLOOP_FEEDBACK_MAX_DELAY_SECONDS", float,
                                   "how long after a prediction its label is accepted (default 604800, 7 days)"),
    "feedback_retention_seconds": ("MODELLOOP_FEEDBACK_RETENTION_SECONDS", float,
                                   "records older than this are deleted, by whole UTC days (default 2592000, 30 "
                                   "days)"),
    "feedback_log_inputs": ("MODELLOOP_FEEDBACK_LOG_INPUTS", flag,
                            "also record each prediction's input features (default false)"),
    "records_flush_seconds": ("MODELLOOP_RECORDS_FLUSH_SECONDS", float,
                              "how often recorded predictions are written to the store as a segment: a killed pod "
                              "loses at most this much (default 0.25; 0.05 to 3600)"),
    "max_feedback_ids": ("MODELLOOP_MAX_FEEDBACK_IDS", int, "most labels in one feedback call (default 10000)"),
    "pod_name": ("MODELLOOP_POD_NAME", str, "this pod's name: names the record segments it writes"),
    "shadow_to": ("MODELLOOP_SHADOW_TO", str,
                  "host:port of a challenger server: answered inference requests are copied to it, sampled by "
                  "request id, never delaying the answer (unset: no copies)"),
    "shadow_fraction": ("MODELLOOP_SHADOW_FRACTION", float,
                        "share of requests copied to --shadow-to, 0 to 1 (default 1)"),
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
    if config.runtime not in RUNTIMES:
        parser.error(f"--runtime {config.runtime!r} must be one of {', '.join(RUNTIMES)}")
    if config.log_level.lower() not in ("debug", "info", "warning", "error"):
        parser.error(f"--log-level {config.log_level!r} must be one of debug, info, warning, error")
    for flag, digest in (("--model-sha256", config.model_sha256), ("--metadata-sha256", config.metadata_sha256)):
        if digest is not None and not SHA256.match(digest):
            parser.error(f"{flag} {digest!r} must be 64 lowercase hexadecimal digits")
    for flag, value in (("--max-concurrency", config.max_concurrency), ("--max-queue", config.max_queue),
                        ("--max-rows", config.max_rows), ("--max-string-length", config.max_string_length),
                        ("--max-header-bytes", config.max_header_bytes),
                        ("--sketch-min-rows", config.sketch_min_rows), ("--max-feedback-ids", config.max_feedback_ids)):
        if value < 1:
            parser.error(f"{flag} {value} must be at least 1")
    for flag, seconds in (("--inference-timeout-seconds", config.inference_timeout_seconds),
                          ("--header-timeout-seconds", config.header_timeout_seconds),
                          ("--body-timeout-seconds", config.body_timeout_seconds),
                          ("--keep-alive-seconds", config.keep_alive_seconds)):
        if not seconds > 0:
            parser.error(f"{flag} {seconds:g} must be more than 0")
    if not 0 <= config.shadow_fraction <= 1:
        parser.error(f"--shadow-fraction {config.shadow_fraction:g} must be between 0 and 1")
    if config.shadow_to is not None:
        host, _, port = config.shadow_to.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) <= 65535:
            parser.error(f"--shadow-to {config.shadow_to!r} must be host:port")
    if not 0.05 <= config.records_flush_seconds <= 3600:
        parser.error(f"--records-flush-seconds {config.records_flush_seconds:g} must be between 0.05 and 3600")
    if config.feedback_retention_seconds < config.feedback_max_delay_seconds:
        parser.error("--feedback-retention-seconds must be at least --feedback-max-delay-seconds")
    if not 60 <= config.feedback_max_delay_seconds <= 366 * 86400:
        parser.error(f"--feedback-max-delay-seconds {config.feedback_max_delay_seconds:g} must be between 60 and "
                     f"31622400 (366 days)")
