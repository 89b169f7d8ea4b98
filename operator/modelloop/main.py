"""`modelloop-operator`: the one operator process that owns the three kinds (kopf under the hood).

All handlers are registered by importing modelloop.controllers; start-up settings live here.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator
from urllib.parse import urlsplit

import kopf
import prometheus_client

from .config import SETTINGS
from .leader import LeaderElector, Timing

log = logging.getLogger("modelloop")


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Our handlers are event/timer handlers that write their own status and Events; kopf's own
    # per-handler Events would only add noise, so it posts warnings and errors only.
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
    settings.execution.max_workers = SETTINGS.workers
    # No cap on kopf's per-object workers (asyncio tasks; the threads above bound the work): with a cap of 64
    # per watch stream, the 36 ModelTrainings beyond the 64th of each namespace in bench/operator never got a
    # worker, so never a first reconcile, in 8 minutes.
    settings.queueing.worker_limit = None


def release_finalizers(registry: kopf.OperatorRegistry) -> None:
    """Register every timer and daemon as not needing a finalizer.

    kopf's @timer and @daemon hard-code `requires_finalizer=True`, so kopf would block the deletion of every
    ModelTraining, ModelDeployment and DriftMonitor until the operator releases it: after `helm uninstall`
    (or with the operator down) those objects, and so their namespaces, would stay Terminating for good.
    modelloop has nothing to do at deletion: children carry owner references (the garbage collector
    removes them), artifact versions are kept on purpose, and kopf stops a daemon or timer when its object
    is gone from the watch stream. With no handler requiring it, kopf also removes a finalizer left by an
    older version. (The spawning registry is private kopf API; tests/integration check the outcome.)
    """
    spawning = registry._spawning  # noqa: SLF001
    spawning._handlers = [dataclasses.replace(h, requires_finalizer=False) for h in spawning._handlers]  # noqa: SLF001


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="modelloop-operator", description=__doc__)
    parser.add_argument("-n", "--namespace", action="append", default=[],
                        help="namespace to watch (repeatable; glob patterns like team-* work); default all namespaces")
    parser.add_argument("--metrics-port", type=int, default=SETTINGS.metrics_port,
                        help="port of the Prometheus /metrics endpoint (0 disables)")
    parser.add_argument("--liveness", default=os.environ.get("MODELLOOP_LIVENESS", "http://0.0.0.0:8081/healthz"),
                        help="kopf liveness endpoint URL ('' disables)")
    parser.add_argument("--leader-elect", action=argparse.BooleanOptionalAction, default=SETTINGS.leader_elect,
                        help="elect one active replica on a Lease (MODELLOOP_LEADER_ELECT; the chart turns it on)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s")
    for noisy in ("kubernetes.client.rest", "urllib3", "botocore", "boto3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.metrics_port:
        prometheus_client.start_http_server(args.metrics_port)
        log.info("metrics=serving port=%d", args.metrics_port)

    from . import controllers  # noqa: F401 - registers every handler

    release_finalizers(kopf.get_default_registry())

    elector = None
    if args.leader_elect:
        elector = LeaderElector(SETTINGS.operator_namespace, SETTINGS.leader_lease, timing=Timing(
            SETTINGS.lease_duration_seconds, SETTINGS.lease_renew_deadline_seconds, SETTINGS.lease_retry_seconds))
        with standby_health(args.liveness):  # the kubelet's probes pass while this replica waits
            elector.acquire()
    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat.PLAIN)
    try:
        kopf.run(standalone=True, clusterwide=not args.namespace, namespaces=args.namespace,
                 liveness_endpoint=args.liveness or None)
    finally:
        if elector:  # a graceful stop (SIGTERM: rolling update, drain) hands over at once
            elector.release()


@contextmanager
def standby_health(liveness_url: str) -> Iterator[None]:
    """Answer the liveness URL with 200 while this replica waits to lead (kopf's own endpoint starts with kopf)."""
    if not liveness_url:
        yield
        return
    url = urlsplit(liveness_url)

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            ok = self.path == url.path
            self.send_response(200 if ok else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"standby": true}' if ok else b"{}")

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer((url.hostname or "0.0.0.0", url.port or 80), Health)
    thread = threading.Thread(target=server.serve_forever, name="standby-health", daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


if __name__ == "__main__":
    main()
