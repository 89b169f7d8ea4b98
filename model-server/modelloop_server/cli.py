"""`modelloop-serve`: the entrypoint of the model server pods.

    modelloop-serve --model-uri s3://models/iris/v3 [--model-name iris] [--port 8080] ...

Every flag has an environment variable (see config.py); the controller sets those in the pod template.

Lifecycle, as a kubelet sees it:
- The port opens at once: liveness is 200, readiness 503 while the model loads in the background.
- Readiness turns 200 once the model is loaded (the pinned digests of metadata.json and the model
  verified first, then the exact type list of model.skops or the checks of model.onnx, by --runtime) and
  a warm-up prediction passed.
- A model that cannot be served (digest mismatch, untrusted type, unreachable store, failing warm-up)
  makes the process exit 1 with a one-line log and termination message: the pod shows CrashLoopBackOff
  with the reason, the kubelet retries with back-off (which heals a store that was briefly down), and a
  rollout to a bad version stalls and is rolled back by the controller. Staying up "not ready" would
  hide the reason in logs and retry nothing.
- SIGTERM: readiness turns 503 at once, requests are still served for --drain-seconds (the endpoints
  take that long to drop the pod) with `Connection: close`, then the listener closes, in-flight requests
  finish and the process exits 0. A second SIGTERM, or SIGINT, skips what remains of the drain.
"""
from __future__ import annotations

import logging
import signal
import sys
import time
from types import FrameType
from typing import Sequence

import prometheus_client
import uvicorn

from .app import ModelServerApp
from .config import GRACEFUL_TIMEOUT_SECONDS, ServerConfig, parse_config
from .connections import guarded_protocol
from .logs import configure_logging, log_event
from .model import ServedModel


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain period between SIGTERM and shutdown, and exit code 0 after it."""

    def __init__(self, config: uvicorn.Config, app: ModelServerApp, drain_seconds: float) -> None:
        super().__init__(config)
        self.app = app
        self.drain_seconds = drain_seconds
        self.drain_until: float | None = None
        self.exit_code = 0
        self.fatal_reason: str | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Runs as a signal handler: only set flags here; on_tick logs and acts. Not calling super() also
        # keeps uvicorn from re-raising the signal after shutdown, which would end the process with 143.
        if sig == signal.SIGTERM and self.drain_until is None and not self.should_exit:
            self.app.start_draining()
            self.drain_until = time.monotonic() + (self.drain_seconds if self.app.loaded else 0.0)
        else:
            self.should_exit = True

    def fail(self, reason: str) -> None:
        self.fatal_reason = reason
        self.exit_code = 1
        self.should_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self.drain_until is not None and not getattr(self, "_drain_logged", False):
            self._drain_logged = True
            log_event("server.draining", seconds=max(0.0, round(self.drain_until - time.monotonic(), 3)))
        if self.drain_until is not None and time.monotonic() >= self.drain_until:
            self.should_exit = True
        return await super().on_tick(counter)


def build_server(config: ServerConfig) -> DrainingServer:
    app = ModelServerApp(config, load=lambda: load_served_model(
        config.model_uri, config.model_name, model_sha256=config.model_sha256,
        metadata_sha256=config.metadata_sha256, runtime=config.runtime))
    protocol = guarded_protocol(config.header_timeout_seconds, config.max_header_bytes,
                                on_refused=lambda limit: app.metrics.refused.labels(limit).inc())
    uv_config = uvicorn.Config(
        app, host=config.host, port=config.port, loop="uvloop", http=protocol, lifespan="on",
        access_log=False, log_level=logging.WARNING, log_config=None, server_header=False,
        proxy_headers=False, timeout_graceful_shutdown=GRACEFUL_TIMEOUT_SECONDS, backlog=2048,
        timeout_keep_alive=config.keep_alive_seconds)  # type: ignore[arg-type] - a float works (call_later)
    server = DrainingServer(uv_config, app, config.drain_seconds)
    app.on_fatal = server.fail
    return server


def load_served_model(uri: str, name: str | None, *, model_sha256: str | None = None,
                      metadata_sha256: str | None = None, runtime: str = "auto") -> ServedModel:
    """Read and verify the artifact version (the pinned digests, then the exact type list or the ONNX
    checks, before deserialising) and wrap its estimator or its ONNX session."""
    from modelloop.artifacts import OnnxUnavailableError, load_model

    try:
        loaded = load_model(uri, expected_sha256=model_sha256, expected_metadata_sha256=metadata_sha256,
                            runtime=runtime)
    except OnnxUnavailableError as exc:
        if runtime == "onnx":
            raise OnnxUnavailableError(f"runtime onnx (spec.server.runtime of the ModelDeployment; --runtime, "
                                       f"MODELLOOP_RUNTIME) needs model.onnx: {exc}; set it to auto or sklearn to "
                                       f"serve this version with scikit-learn") from None
        raise  # an XGBoost or LightGBM version is served through model.onnx only: no runtime would help
    return ServedModel(loaded.model, loaded.metadata.wire(), name=name, onnx=loaded.onnx)


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(argv)
    configure_logging(level=getattr(logging, config.log_level.upper()))
    prometheus_client.disable_created_metrics()  # *_created series: noise for dashboards and scrapes
    from modelloop.runtime import termination_log_path, write_termination_message

    log_event("server.starting", uri=config.model_uri, host=config.host, port=config.port,
              max_batch_size=config.max_batch_size, max_batch_wait_ms=config.max_batch_wait_ms,
              max_body_bytes=config.max_body_bytes, drain_seconds=config.drain_seconds,
              model_pinned=config.model_sha256 is not None, metadata_pinned=config.metadata_sha256 is not None,
              runtime=config.runtime,
              max_concurrency=config.max_concurrency, max_queue=config.max_queue, max_rows=config.max_rows,
              max_string_length=config.max_string_length)
    server = build_server(config)
    server.run()
    if server.fatal_reason is not None:
        write_termination_message(termination_log_path(), f"ModelRefused: {server.fatal_reason}")
    log_event("server.exited", code=server.exit_code)
    return server.exit_code


if __name__ == "__main__":
    sys.exit(main())
