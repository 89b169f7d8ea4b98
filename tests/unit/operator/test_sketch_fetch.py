"""Live sketches are fetched from every pod at once, within one deadline, and never beyond a size cap:
a slow or hostile pod costs one error line, never the check (real HTTP servers on loopback)."""
from __future__ import annotations

import asyncio
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from modelloop.controllers.drift import fetch_snapshots, sketch_url
from modelloop.retrain import check_interval

SKETCH = {"format": "modelloop.sketch/v1", "rows": 0, "features": []}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def pods():
    """`start(address, behaviour)`: a fake server pod on <address>:<port> that answers a sketch, stalls,
    streams an endless body or answers garbage."""
    port, servers, release = _free_port(), [], threading.Event()

    def start(address: str, behaviour: str, barrier: threading.Barrier | None = None) -> str:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                if behaviour == "stall":
                    release.wait(30)
                    return
                if barrier is not None:  # answers only once every pod of the barrier has been asked
                    barrier.wait(30)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                if behaviour == "huge":
                    for _ in range(10_000):
                        self.wfile.write(b" " * 4096)
                else:
                    self.wfile.write(b"{not json" if behaviour == "garbage" else json.dumps(SKETCH).encode())

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer((address, port), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return address

    yield start, port
    release.set()
    for s in servers:
        s.shutdown()
        s.server_close()


def test_every_pod_is_asked_and_each_failure_is_one_error(pods, monkeypatch):
    start, port = pods
    monkeypatch.setattr("modelloop.controllers.drift.SKETCH_PORT", port)
    addresses = [start("127.0.0.2", "sketch"), start("127.0.0.3", "stall"), start("127.0.0.4", "huge"),
                 start("127.0.0.5", "garbage"), start("127.0.0.6", "sketch")]
    snaps, errors = asyncio.run(fetch_snapshots(addresses, "churn", deadline=1.0, max_bytes=64 * 1024))
    assert snaps == [SKETCH, SKETCH]
    by_pod = {e.split(":", 1)[0]: e for e in errors}
    assert set(by_pod) == {"127.0.0.3", "127.0.0.4", "127.0.0.5"}
    assert "no answer within 1s" in by_pod["127.0.0.3"]
    assert "malformed sketch" in by_pod["127.0.0.4"] and "larger than 65536 bytes" in by_pod["127.0.0.4"]
    assert "malformed sketch" in by_pod["127.0.0.5"]


def test_pods_are_asked_concurrently_not_one_after_the_other(pods, monkeypatch):
    start, port = pods
    monkeypatch.setattr("modelloop.controllers.drift.SKETCH_PORT", port)
    everyone = threading.Barrier(10)  # no pod answers before all ten have been asked
    addresses = [start(f"127.0.1.{i}", "sketch", everyone) for i in range(2, 12)]
    snaps, errors = asyncio.run(fetch_snapshots(addresses, "churn", deadline=20.0))
    assert errors == [] and len(snaps) == 10


def test_checks_share_one_ssl_context_instead_of_loading_the_ca_bundle_each_time(pods, monkeypatch):
    """Each check's client used to load certifi's CA bundle (30 ms of CPU) for plain-http sketch URLs."""
    import ssl

    start, port = pods
    monkeypatch.setattr("modelloop.controllers.drift.SKETCH_PORT", port)
    loads = []
    original = ssl.SSLContext.load_verify_locations
    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations",
                        lambda self, *a, **kw: (loads.append(a or kw), original(self, *a, **kw))[1])
    address = start("127.0.0.2", "sketch")
    for _ in range(3):
        snaps, errors = asyncio.run(fetch_snapshots([address], "churn", deadline=5.0))
        assert snaps == [SKETCH] and errors == []
    assert len(loads) <= 1, loads


def test_sketch_urls_use_the_sketch_port_and_bracket_ipv6():
    assert sketch_url("10.0.0.7", "churn") == "http://10.0.0.7:8081/v2/models/churn/sketch"
    assert sketch_url("fd00::7", "churn") == "http://[fd00::7]:8081/v2/models/churn/sketch"


@pytest.mark.parametrize("interval, seconds", [("30s", 30.0), ("1s", 10.0), ("0s", 10.0), ("5m", 300.0),
                                               (None, 60.0), ("soon", 60.0)])
def test_check_interval_never_goes_below_the_schema_minimum(interval, seconds):
    assert check_interval(interval) == seconds
