"""Any client of the inference port, however hostile its requests: the event loop keeps answering health
checks, memory stays bounded, refused requests leave nothing behind, and /metrics does not tell one
request's prediction (issue 22, findings 1-4; docs/security.md, "Clients of the inference port").

Real `modelloop-serve` processes with the default limits (16 MiB bodies, 10,000 rows, 1,024 characters per
text value), reached over raw sockets so that the test process's own work does not stand between a health
check and its answer. Memory is read from /proc: the peak RSS (VmHWM, reset once the server is idle) and
the current RSS (VmRSS) of the server process.
"""
from __future__ import annotations

import gc
import json
import socket
import struct
import threading
import time
import weakref
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import httpx
import numpy as np
import orjson
import pytest

from modelloop.artifacts import load_model

from modelloop_server import app as app_module
from modelloop_server.app import ModelServerApp
from modelloop_server.config import ServerConfig, parse_config
from modelloop_server.metrics import ServerMetrics
from modelloop_server.model import ServedModel

from .conftest import Artifact, ServerProcess, free_port, running, serve_in_thread, v2_matrix

MAX_BODY = 16 * 1024 * 1024  # the default --max-body-bytes
MAX_ROWS = 10_000  # the default --max-rows
MAX_STRING = 1024  # the default --max-string-length
MIB = 1024 * 1024
HEALTH_BOUND_SECONDS = 0.100  # issue 22: health answers within 100 ms while the largest request decodes
HANG_GUARD = 120.0  # seconds: only to fail instead of hanging
FLOWERS = b"/v2/models/flowers/infer"
CHURN = b"/v2/models/churn/infer"
CHURN_V1 = b"/v1/models/churn:predict"
FLOWER_ROW = b"[5.1,3.5,1.4,0.2]"


@pytest.fixture(scope="module")
def defaults(artifacts: dict[str, Artifact], tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[dict[str, ServerProcess]]:
    """A flowers (all-numeric) and a churn (text feature `plan`) server with every limit at its default."""
    logs = tmp_path_factory.mktemp("hostile")
    started = {name: ServerProcess(["--model-uri", artifacts[name].uri], logs / f"{name}.log")
               for name in ("flowers", "churn")}
    with running(started):
        yield started


# -- requests -----------------------------------------------------------------------------------------

def post(path: bytes, body: bytes, *, binary_header: int | None = None) -> bytes:
    """The bytes of one POST that asks the server to close the connection after its answer."""
    extra = b"" if binary_header is None else b"inference-header-content-length: %d\r\n" % binary_header
    content_type = b"application/json" if binary_header is None else b"application/octet-stream"
    return (b"POST %s HTTP/1.1\r\nhost: x\r\ncontent-type: %s\r\ncontent-length: %d\r\nconnection: close\r\n%s\r\n"
            % (path, content_type, len(body), extra)) + body


def exchange(port: int, request: bytes) -> tuple[int, bytes]:
    """Send `request` on a fresh connection; the status and body of the answer (read until the server closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=HANG_GUARD) as conn:
        conn.sendall(request)
        chunks = []
        while chunk := conn.recv(1 << 16):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def filled(prefix: bytes, item: bytes, suffix: bytes, size: int = MAX_BODY) -> tuple[bytes, int]:
    """`prefix` + `item` repeated (comma-separated) + `suffix`, as near `size` bytes as fits; and the count."""
    count = (size - len(prefix) - len(suffix) - 64) // (len(item) + 1)
    return prefix + b",".join([item] * count) + suffix, count


def churn_columns(plan: bytes, rows: int, datatype: bytes = b"BYTES", *, others: int | None = None) -> bytes:
    """A V2 request for churn with `plan`'s data given as JSON text; the other features have `others` rows."""
    n = rows if others is None else others
    numbers = b",".join([b"3.0"] * n)
    return (b'{"inputs":[{"name":"tenure","datatype":"FP64","shape":[%d],"data":[%s]},'
            b'{"name":"spend","datatype":"FP64","shape":[%d],"data":[%s]},'
            b'{"name":"region","datatype":"INT64","shape":[%d],"data":[%s]},'
            b'{"name":"plan","datatype":"%s","shape":[%d],"data":%s}]}'
            % (n, numbers, n, numbers, n, b",".join([b"1"] * n), datatype, rows, plan))


def hostile_requests() -> dict[str, tuple[str, bytes]]:
    """The bodies of issue 22 and their kin, each within --max-body-bytes: name -> (server, request)."""
    dense, rows = filled(b'{"inputs":[{"name":"input-0","datatype":"FP64","shape":[999999,4],"data":[',
                         FLOWER_ROW, b"]}]}")
    dense = dense.replace(b"[999999,4]", b"[%6d,4]" % rows, 1)  # the shape its data has (6 digits either way)
    instances, _ = filled(b'{"instances":[', FLOWER_ROW, b"]}")
    plan_1e308, values = filled(b"[", b"1e308", b"]", MAX_BODY - 400)
    empty_lists, lists = filled(b"[", b"[]", b"]", MAX_BODY - 400)
    objects, _ = filled(b'{"instances":[', b'{"tenure":3,"spend":9,"plan":"basic","region":1}', b"]}")
    long_text = b'["' + b"x" * (MAX_BODY - 600) + b'"]'
    elements = (MAX_BODY - 600) // 4
    header = orjson.dumps({"inputs": [
        {"name": "tenure", "datatype": "FP64", "shape": [1], "data": [3.0]},
        {"name": "spend", "datatype": "FP64", "shape": [1], "data": [9.0]},
        {"name": "region", "datatype": "INT64", "shape": [1], "data": [1]},
        {"name": "plan", "datatype": "BYTES", "shape": [elements], "parameters": {"binary_data_size": 4 * elements}}]})
    undeclared = header.replace(b'"shape":[%d]' % elements, b'"shape":[1]')
    empty_bytes = b"\x00\x00\x00\x00" * elements
    return {
        "dense numbers": ("flowers", post(FLOWERS, dense)),
        "dense numbers, V1": ("flowers", post(b"/v1/models/flowers:predict", instances)),
        "1e308 for a text feature": ("churn", post(CHURN, churn_columns(plan_1e308, values, others=1))),
        "empty lists for a text feature": ("churn", post(CHURN, churn_columns(empty_lists, lists, others=1))),
        "V1 objects": ("churn", post(CHURN_V1, objects)),
        "one long text value": ("churn", post(CHURN, churn_columns(long_text, 1))),
        "binary BYTES, declared": ("churn", post(CHURN, header + empty_bytes, binary_header=len(header))),
        "binary BYTES, undeclared": ("churn", post(CHURN, undeclared + empty_bytes, binary_header=len(undeclared))),
    }


def largest_allowed_requests() -> dict[str, tuple[str, bytes]]:
    """Requests at the limits that are served: 10,000 rows, text values of 1,024 characters."""
    matrix = b'{"inputs":[{"name":"input-0","datatype":"FP64","shape":[%d,4],"data":[%s]}]}' % (
        MAX_ROWS, b",".join([FLOWER_ROW] * MAX_ROWS))
    objects = b'{"instances":[%s]}' % b",".join(
        [b'{"tenure":3.0,"spend":9.5,"plan":"%s","region":1}' % (b"b" * MAX_STRING)] * MAX_ROWS)
    plan_1e308 = b"[%s]" % b",".join([b'"x"', b"1e308"] * (MAX_ROWS // 2))
    text = b"p" * MAX_STRING
    numbers = np.full(MAX_ROWS, 3.0).tobytes()
    header = orjson.dumps({"inputs": [
        {"name": "tenure", "datatype": "FP64", "shape": [MAX_ROWS], "parameters": {"binary_data_size": len(numbers)}},
        {"name": "spend", "datatype": "FP64", "shape": [MAX_ROWS], "parameters": {"binary_data_size": len(numbers)}},
        {"name": "region", "datatype": "INT64", "shape": [MAX_ROWS], "data": [1] * MAX_ROWS},
        {"name": "plan", "datatype": "BYTES", "shape": [MAX_ROWS],
         "parameters": {"binary_data_size": (4 + len(text)) * MAX_ROWS}}]})
    binary = numbers + numbers + (struct.pack("<I", len(text)) + text) * MAX_ROWS
    return {
        "10,000 rows": ("flowers", post(FLOWERS, matrix)),
        "10,000 V1 objects of long text": ("churn", post(CHURN_V1, objects)),
        "10,000 text values, half 1e308": ("churn", post(CHURN, churn_columns(plan_1e308, MAX_ROWS))),
        "10,000 binary rows of long text": ("churn", post(CHURN, header + binary, binary_header=len(header))),
    }


# -- the server process --------------------------------------------------------------------------------

def memory_mib(server: ServerProcess, field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of the server process, in MiB."""
    assert server.process is not None
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"{field} not in /proc/{server.process.pid}/status")


def reset_peak(server: ServerProcess) -> None:
    """Make VmHWM start again from the current RSS (Linux: "5" to clear_refs). Where that is not allowed
    the peak since the start stays, which only makes the bound harder to meet."""
    assert server.process is not None
    try:
        Path(f"/proc/{server.process.pid}/clear_refs").write_text("5")
    except OSError:
        pass


def idle_rss(name: str, server: ServerProcess) -> float:
    """RSS after a few ordinary requests, when nothing is in flight."""
    ordinary = post(FLOWERS, b'{"inputs":[{"name":"input-0","datatype":"FP64","shape":[1,4],"data":[%s]}]}'
                    % FLOWER_ROW) if name == "flowers" else post(CHURN, churn_columns(b'["basic"]', 1))
    for _ in range(3):
        assert exchange(server.port, ordinary)[0] == 200
    time.sleep(0.2)
    return memory_mib(server, "VmRSS")


def memory_bound(idle: float) -> float:
    """Issue 22: no server above twice its idle RSS plus four times the largest allowed body."""
    return 2 * idle + 4 * MAX_BODY / MIB


class HealthPoller(threading.Thread):
    """GET /v2/health/live on one kept-alive connection, again and again until stopped: each answer's time."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.latencies: list[float] = []
        self.stopping = threading.Event()
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=HANG_GUARD) as conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                while not self.stopping.is_set():
                    started = time.perf_counter()
                    conn.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n")
                    answer = b""
                    while not answer.endswith(b'{"live":true}'):
                        chunk = conn.recv(4096)
                        assert chunk, "the server closed the health connection"
                        answer += chunk
                    self.latencies.append(time.perf_counter() - started)
                    assert answer.startswith(b"HTTP/1.1 200 "), answer
                    time.sleep(0.005)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.failure = exc


# -- finding 1: the event loop ----------------------------------------------------------------------------

def storm(servers: dict[str, ServerProcess], requests: dict[str, tuple[str, bytes]]
          ) -> tuple[dict[str, list[int]], dict[str, list[float]]]:
    """Four clients at once send each of `requests` twice, while /v2/health/live is polled on each server:
    the statuses per request and the health latencies per server."""
    statuses: dict[str, list[int]] = {name: [] for name in requests}
    pollers = {name: HealthPoller(server.port) for name, server in servers.items()}
    for poller in pollers.values():
        poller.start()
    time.sleep(0.2)  # a few answers from an idle server first

    def send(share: list[str]) -> None:
        for name in share:
            server, request = requests[name]
            statuses[name].append(exchange(servers[server].port, request)[0])

    names = list(requests)
    senders = [threading.Thread(target=send, args=(names[i::4] * 2,)) for i in range(4)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(HANG_GUARD)
    for poller in pollers.values():
        poller.stopping.set()
        poller.join(HANG_GUARD)
        assert poller.failure is None, poller.failure
    return statuses, {name: poller.latencies for name, poller in pollers.items()}


def test_health_answers_within_100_ms_while_the_largest_requests_decode(defaults: dict[str, ServerProcess]) -> None:
    allowed, hostile = largest_allowed_requests(), hostile_requests()
    # The bound is wall-clock time on a machine other processes share: a round in which the server process
    # was not scheduled for 100 ms says nothing about the server, so the best of three rounds counts. A
    # server that decodes on its event loop fails every round (issue 22: 2.1 to 5.6 s).
    rounds = []
    for _ in range(3):
        statuses, latencies = storm(defaults, {**allowed, **hostile})
        assert all(len(answered) >= 10 for answered in latencies.values()), latencies
        rounds.append({name: max(answered) for name, answered in latencies.items()})
        if max(rounds[-1].values()) < HEALTH_BOUND_SECONDS:
            break
    slowest = [{name: f"{seconds * 1000:.0f} ms" for name, seconds in found.items()} for found in rounds]
    assert max(rounds[-1].values()) < HEALTH_BOUND_SECONDS, f"slowest /v2/health/live per round: {slowest}"
    for name in allowed:
        assert statuses[name] == [200, 200], name
    for name in hostile:
        assert statuses[name] and all(status in (400, 413) for status in statuses[name]), (name, statuses[name])


# -- finding 2: memory ------------------------------------------------------------------------------------

def test_hostile_bodies_keep_the_server_under_twice_its_idle_rss_plus_four_bodies(
        defaults: dict[str, ServerProcess]) -> None:
    idle = {name: idle_rss(name, server) for name, server in defaults.items()}
    for server in defaults.values():
        reset_peak(server)
    for name, (server, request) in {**hostile_requests(), **largest_allowed_requests()}.items():
        status, _ = exchange(defaults[server].port, request)
        assert status in (200, 400, 413), name
    for name, server in defaults.items():
        peak = memory_mib(server, "VmHWM")
        assert peak <= memory_bound(idle[name]), f"{name}: peak RSS {peak:.0f} MiB, idle {idle[name]:.0f} MiB"


def test_text_values_over_the_limit_get_413_naming_the_setting_not_the_value(
        defaults: dict[str, ServerProcess]) -> None:
    churn = defaults["churn"]
    too_long = b'["%s"]' % (b"s3cr3t" * 200)
    status, body = exchange(churn.port, post(CHURN, churn_columns(too_long, 1)))
    error = json.loads(body)["error"]
    assert status == 413 and "--max-string-length" in error and "1024 characters" in error
    assert "s3cr3t" not in error
    # a number sent for a text feature is held to the same limit before its digits are written
    status, _ = exchange(churn.port, post(CHURN, churn_columns(b"[1e308]", 1)))
    assert status == 200
    assert churn.metric("modelloop_server_refused_total", {"limit": "string_length"}) >= 1


def test_rows_over_the_limit_are_refused_before_their_values_are_read(defaults: dict[str, ServerProcess]) -> None:
    flowers = defaults["flowers"]
    # 10,001 rows declared, 1 sent: refused on the shape, not after converting the data
    body = b'{"inputs":[{"name":"input-0","datatype":"FP64","shape":[10001,4],"data":[%s]}]}' % FLOWER_ROW
    status, answer = exchange(flowers.port, post(FLOWERS, body))
    assert status == 413
    assert json.loads(answer)["error"] == ("the request holds 10001 rows; the limit is 10000 rows per request "
                                           "(--max-rows); send them in several requests")
    dense, _ = filled(b'{"instances":[', FLOWER_ROW, b"]}", 4 * MIB)
    status, answer = exchange(flowers.port, post(b"/v1/models/flowers:predict", dense))
    assert status == 413 and "--max-rows" in json.loads(answer)["error"]
    assert flowers.metric("modelloop_server_refused_total", {"limit": "values"}) >= 1
    assert flowers.metric("modelloop_server_refused_total", {"limit": "rows"}) >= 1


# -- finding 3: refused requests ------------------------------------------------------------------------------

def test_refused_large_requests_leave_no_memory_behind(defaults: dict[str, ServerProcess]) -> None:
    churn = defaults["churn"]
    idle = idle_rss("churn", churn)
    # issue 22's case: 8 MiB of 1e308 for a text feature (a server that converts them first holds ~500 MiB)
    plan_1e308, values = filled(b"[", b"1e308", b"]", 8 * MIB)
    for _ in range(4):
        assert exchange(churn.port, post(CHURN, churn_columns(plan_1e308, values, others=1)))[0] in (400, 413)
    time.sleep(0.2)
    rss = memory_mib(churn, "VmRSS")
    assert rss <= memory_bound(idle), f"RSS {rss:.0f} MiB after 4 refused 8 MiB requests; idle {idle:.0f} MiB"
    # refused only once its 16 MiB were parsed, deep in the decoding: a text value over --max-string-length
    long_text = hostile_requests()["one long text value"][1]
    for _ in range(16):
        assert exchange(churn.port, long_text)[0] == 413
    time.sleep(0.2)
    rss = memory_mib(churn, "VmRSS")
    assert rss <= memory_bound(idle), f"RSS {rss:.0f} MiB after 16 refused 16 MiB requests; idle {idle:.0f} MiB"


class Marker:
    """An object that lives in the frame of a decoding, to tell when that frame is freed."""


@pytest.mark.parametrize("size", [2_000, 100_000], ids=["decoded-on-the-loop", "decoded-off-the-loop"])
def test_a_refused_request_s_decoding_frames_are_freed_at_once(artifacts: dict[str, Artifact], size: int,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # With the cycle collector off, only reference counting frees: a refusal that kept its exception, and so
    # its traceback, would keep every frame of the decoding alive with its locals (the body, the document).
    markers: list[weakref.ref] = []
    decode_infer = app_module.v2.decode_infer

    def decode_with_a_marker(*args: Any) -> Any:
        marker = Marker()
        markers.append(weakref.ref(marker))
        return decode_infer(*args)

    monkeypatch.setattr(app_module.v2, "decode_infer", decode_with_a_marker)
    loaded = load_model(artifacts["churn"].uri)
    model = ServedModel(loaded.model, loaded.metadata.wire())
    app = ModelServerApp(ServerConfig(model_uri=artifacts["churn"].uri, sketch_port=free_port()), load=lambda: model)
    body = churn_columns(b'["%s"]' % (b"x" * size), 1)
    assert (len(body) > app_module.DECODE_OFF_LOOP_BYTES) == (size > 50_000)
    with serve_in_thread(app) as url:
        deadline = time.monotonic() + HANG_GUARD
        while httpx.get(f"{url}/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        gc.collect()
        gc.disable()
        try:
            for _ in range(3):
                response = httpx.post(f"{url}/v2/models/churn/infer", content=body,
                                      headers={"content-type": "application/json"})
                assert response.status_code == 413 and "--max-string-length" in response.json()["error"]
            alive = sum(marker() is not None for marker in markers)
        finally:
            gc.enable()
    assert len(markers) == 3 and alive == 0, f"{alive} of {len(markers)} refused decodings are still in memory"


# -- finding 4: /metrics --------------------------------------------------------------------------------------

def class_counts(client: httpx.Client, server: ServerProcess) -> dict[str, float]:
    prefix = "modelloop_server_predictions_total{"
    return {line.split('"')[1]: float(line.rsplit(" ", 1)[1])
            for line in client.get(f"{server.url}/metrics").text.splitlines() if line.startswith(prefix)}


def test_one_request_s_class_cannot_be_read_from_metrics_on_the_inference_port(flowers: ServerProcess,
                                                                               client: httpx.Client) -> None:
    # flowers keeps the default window (--sketch-min-rows 100): /metrics moves by 0 rows or by 100 or more
    published = []
    before = class_counts(client, flowers)
    for _ in range(120):
        response = client.post(f"{flowers.url}/v2/models/flowers/infer", json=v2_matrix([[6.3, 2.8, 5.1, 1.5]]))
        assert response.status_code == 200
        after = class_counts(client, flowers)
        moved = sum(after.values()) - sum(before.values())
        assert moved == 0 or moved >= 100, f"/metrics moved by {moved} rows after a 1-row request"
        published.append(moved)
        before = after
    assert any(published), "120 rows were predicted and no window was published"


def test_the_prediction_histogram_is_published_in_windows_of_min_rows() -> None:
    metrics = ServerMetrics(min_rows=3)
    metrics.set_model(SimpleNamespace(name="m", version=1, sha256="0" * 64, classifier=False, runtime="sklearn"),
                      [1.0, 2.0])

    def buckets() -> dict[str, float]:
        text = metrics.exposition().decode()
        return {line.split("{")[1].split("}")[0]: float(line.split()[-1]) for line in text.splitlines()
                if line.startswith("modelloop_server_prediction_value_bucket")}

    metrics.observe_batch(1, 1, 0.001, np.array([0.5]))
    metrics.observe_batch(1, 1, 0.001, np.array([1.5]))
    assert set(buckets().values()) == {0.0}  # two rows: below the window, nothing published
    metrics.observe_batch(1, 1, 0.001, np.array([9.0]))
    assert buckets() == {'le="1.0"': 1.0, 'le="2.0"': 2.0, 'le="+Inf"': 3.0}
    assert "modelloop_server_prediction_value_sum 11.0" in metrics.exposition().decode()
    metrics.observe_batch(40, 1, 0.001, np.array([1.0, 2.0, 3.0, 0.0] * 10))  # a large batch: binned by numpy
    assert buckets() == {'le="1.0"': 21.0, 'le="2.0"': 32.0, 'le="+Inf"': 43.0}


# -- the setting ---------------------------------------------------------------------------------------------

def test_max_string_length_is_a_setting_with_a_default() -> None:
    assert parse_config(["--model-uri", "file:///m/v1"], environ={}).max_string_length == MAX_STRING
    assert parse_config(["--model-uri", "file:///m/v1"], environ={"MODELLOOP_MAX_STRING_LENGTH": "64"}
                        ).max_string_length == 64
    with pytest.raises(SystemExit):
        parse_config(["--model-uri", "file:///m/v1", "--max-string-length", "0"], environ={})
