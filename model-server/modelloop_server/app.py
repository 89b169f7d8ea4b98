"""The ASGI application: routing, request bodies, errors as JSON, readiness, the model's lifecycle
(load and warm up in the background at startup; drain on shutdown), and the request limits: inference
requests in flight (--max-concurrency), rows and text per request (--max-rows, --max-string-length; held by
the decoders, schema.RequestLimits), body read time (--body-timeout-seconds; timed only when the body is
not all there yet, see _read_body). A failure of the server itself is answered 500 with a request id,
never with the exception's text, which goes to the log under that id.

The event loop answers health checks: a body larger than DECODE_OFF_LOOP_BYTES is decoded on a thread of
its own (`_decode`), so that the loop waits at most for one bounded numpy or orjson call, never for a
whole decode.

A plain ASGI callable rather than a framework: the hot path (infer) is a dozen lines from the socket to
the batcher, and every response is one JSON body with an explicit length.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import math
import secrets
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Awaitable, Callable, TypeVar

import orjson

from modelloop.artifacts.errors import StorageError
from modelloop.outcomes.join import hash_ids
from modelloop.outcomes.records import REQUEST_ID

from . import v1, v2
from .batching import Batcher, QueueFull
from .config import ServerConfig
from .connections import body_received
from .errors import RETRY_AFTER, ClientError, over_limit, unavailable
from .feedback import decode_feedback
from .inference import Prediction, Predictor
from .live import LiveSketches
from .logs import log_event
from .metrics import LATENCY_BUCKETS, ServerMetrics
from .model import ServedModel
from .recording import Outcomes, open_outcomes
from .schema import RequestLimits
from .served import ServedWindow
from .shadow import OUTCOMES as SHADOW_OUTCOMES, SHADOW_HEADER, ShadowMirror

# Feedback calls held at once (reading, or waiting for the feedback thread); more get 503 with Retry-After, so
# a flood costs at most this many bodies of --max-body-bytes.
MAX_FEEDBACK_CALLS = 4
# Bodies above this are decoded off the event loop: 16 KiB of JSON is ~900 rows of 4 features, 0.4 to 0.8 ms
# to decode (timeit, on 2 shared cores). The thread hop costs 50 to 90 us of CPU, so smaller bodies (a 1-row
# request has ~100 bytes) are decoded on the loop, as before.
DECODE_OFF_LOOP_BYTES = 16 * 1024
Decoded = TypeVar("Decoded")
Result = TypeVar("Result")
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]
Response = tuple[int, bytes, Headers]  # status, body, headers other than content-length

JSON = b"application/json"
OCTET_STREAM = b"application/octet-stream"
JSON_HEADERS: Headers = [(b"content-type", JSON)]
log = logging.getLogger("modelloop.server")


class ModelServerApp:
    def __init__(self, config: ServerConfig, load: Callable[[], ServedModel]) -> None:
        self.config = config
        self.load = load
        self.model: ServedModel | None = None
        self.sketches: LiveSketches | None = None
        self.outcomes: Outcomes | None = None  # prediction records and feedback (config.feedback_uri)
        self.metrics = ServerMetrics(min_rows=config.sketch_min_rows)
        self.served = ServedWindow(LATENCY_BUCKETS)  # inference requests by minute, for /served
        self.limits: RequestLimits | None = None  # set with the model (they depend on its features)
        # Decoding of large bodies: one thread, so that large requests queue for it rather than for the GIL.
        self.decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode")
        self.batcher = Batcher(max_batch_size=config.max_batch_size, max_wait=config.max_batch_wait_ms / 1000,
                               max_queue=config.max_queue, timeout=config.inference_timeout_seconds)
        self.inferring = 0  # inference requests in flight (counted against --max-concurrency)
        self.feedback_calls = 0  # feedback calls read or waiting for the feedback thread (at most MAX_FEEDBACK_CALLS)
        self.loaded = False
        self.draining = False
        self._loading: asyncio.Task | None = None
        self._maintaining: asyncio.Task | None = None
        self._sketch_server: Any = None  # the listener of the sketch port (a uvicorn.Server)
        self.mirror = _mirror(config, self.metrics)  # shadow copies to a challenger (config.shadow_to)
        # Called with a one-line reason when the model cannot be served; the CLI makes the process exit.
        self.on_fatal: Callable[[str], None] = lambda reason: None

    @property
    def ready(self) -> bool:
        return self.loaded and not self.draining

    def start_draining(self) -> None:
        """Readiness goes false; requests are still served (Kubernetes takes a while to stop sending)."""
        self.draining = True
        self.metrics.ready.set(0)

    # -- ASGI ---------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        in_flight = self.metrics.in_flight
        in_flight.inc()
        route = "unmatched"
        limited = inference = shadow = False
        try:
            route, handler, params = match_route(scope["method"], scope["path"])
            # The operator's reads (sketches, performance, served, compare) are on their own port only, and that
            # port serves nothing else.
            on_sketch_port = (scope.get("server") or (None, None))[1] == self.config.sketch_port
            if (handler in _SKETCH_PORT_ONLY) != on_sketch_port:
                raise ClientError(404, f"no such endpoint on this port: {scope['method']} {scope['path']}")
            if handler in _INFERENCE:
                inference = True
                shadow = SHADOW_HEADER in _headers(scope)  # a challenger's copy (shadow.py)
                if self.inferring >= self.config.max_concurrency:
                    self.metrics.refused.labels("concurrency").inc()
                    raise unavailable(f"the server is at its limit of {self.config.max_concurrency} inference "
                                      "requests in flight (--max-concurrency); retry shortly")
                self.inferring += 1
                limited = True
            status, body, headers = await handler(self, scope, receive, **params)
            headers = [*headers, (b"content-length", str(len(body)).encode())]
        except (ClientError, QueueFull) as error:  # QueueFull: from batcher.submit, answered 503
            # Only the answer may outlive this block. The traceback reaches every frame of the decoding and
            # their locals (the body, the parsed document): a name bound to the exception here made a cycle,
            # this frame -> exception -> traceback -> this frame, that only the cycle collector frees, and it
            # may not run for thousands of requests (issue 22: 232 -> 2,507 MiB after four refused 8 MiB
            # requests). So no name is bound, and the traceback is dropped in case another object (a future)
            # still holds the exception.
            error.__traceback__ = None
            status, body, headers = self._refusal(error)
        except Exception:  # noqa: BLE001 - a bug must cost one request, never the process
            request_id = uuid.uuid4().hex[:16]
            log.error("request.failed", exc_info=True, extra={"fields": {"request_id": request_id, "route": route}})
            status = 500
            body = orjson.dumps({"error": f"internal error; the server logged it as request {request_id}",
                                 "requestId": request_id})
            headers = [(b"content-type", JSON), (b"content-length", str(len(body)).encode()),
                       (b"x-request-id", request_id.encode())]
        if self.draining:  # keep-alive clients reconnect, through the Service, to a pod that stays
            headers.append((b"connection", b"close"))
        try:
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        finally:
            if limited:
                self.inferring -= 1
            in_flight.dec()
            seconds = time.perf_counter() - started
            self.metrics.observe_request(route, status, seconds)
            if inference:
                self.served.observe(status, seconds, shadow)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.batcher.start()
                if self.mirror is not None:
                    self.mirror.start()
                await self._start_sketch_listener()
                self._loading = asyncio.get_running_loop().create_task(self._load_model())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._sketch_server is not None:
                    await self._sketch_server.shutdown()
                await self.batcher.close()
                self.decoder.shutdown(wait=False)
                if self.mirror is not None:
                    await self.mirror.close()
                if self.outcomes is not None:  # the last second of records reaches the store
                    await asyncio.get_running_loop().run_in_executor(None, self.outcomes.close)
                log_event("server.stopped")
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _start_sketch_listener(self) -> None:
        """A second listener, on the sketch port, for this same app (it tells the ports apart)."""
        import uvicorn

        config = uvicorn.Config(self, host=self.config.host, port=self.config.sketch_port, http="httptools",
                                lifespan="off", access_log=False, log_config=None, log_level=logging.WARNING,
                                server_header=False, proxy_headers=False, timeout_graceful_shutdown=2)
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        await server.startup()
        self._sketch_server = server

    # -- model lifecycle ----------------------------------------------------------------------------

    async def _load_model(self) -> None:
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            model, sketches, outcomes = await loop.run_in_executor(self.batcher.executor, self._load_and_warm_up)
        except Exception as exc:  # noqa: BLE001 - reported and fatal
            reason = f"{type(exc).__name__}: {exc}"
            log_event("model.refused", level=logging.ERROR, uri=self.config.model_uri, error=reason)
            self.on_fatal(reason)
            return
        self.limits = RequestLimits.for_model(max_rows=self.config.max_rows,
                                              max_string_length=self.config.max_string_length,
                                              features=len(model.schema.names))
        self.model, self.sketches, self.outcomes = model, sketches, outcomes
        if outcomes is not None:
            self._maintaining = loop.create_task(self._maintain_records(), name="maintain-records")
        self.metrics.set_model(model, _prediction_edges(model))
        self.batcher.run = Predictor(model, self.metrics, sketches, outcomes.recorder if outcomes else None).run
        self.loaded = True
        if not self.draining:
            self.metrics.ready.set(1)
        log_event("model.ready", model=model.name, version=model.version, sha256=model.sha256,
                  estimator=model.metadata["estimator"]["class"], runtime=model.runtime,
                  matrix_input=model.matrix_input,
                  seconds=round(time.perf_counter() - started, 3))

    def _load_and_warm_up(self) -> tuple[ServedModel, LiveSketches, Outcomes | None]:
        model = self.load()
        model.warm_up()
        outcomes = open_outcomes(self.config, model, self.metrics) if self.config.feedback_uri else None
        return model, LiveSketches(model, min_rows=self.config.sketch_min_rows), outcomes

    # -- handlers -----------------------------------------------------------------------------------

    async def live(self, scope: Scope, receive: Receive) -> Response:
        if self.batcher.stuck:  # a prediction call past --inference-timeout-seconds that cannot be cancelled
            return 503, b'{"live":false}', JSON_HEADERS
        return 200, b'{"live":true}', JSON_HEADERS

    async def server_ready(self, scope: Scope, receive: Receive) -> Response:
        return (200, b'{"ready":true}', JSON_HEADERS) if self.ready else (503, b'{"ready":false}', JSON_HEADERS)

    async def server_metadata(self, scope: Scope, receive: Receive) -> Response:
        return 200, orjson.dumps(v2.server_metadata()), JSON_HEADERS

    async def model_metadata(self, scope: Scope, receive: Receive, name: str, version: str | None = None
                             ) -> Response:
        return 200, orjson.dumps(v2.model_metadata(self._model(name, version))), JSON_HEADERS

    async def model_ready(self, scope: Scope, receive: Receive, name: str, version: str | None = None) -> Response:
        model = self._model(name, version, must_be_loaded=False)
        body = orjson.dumps({"name": model.name if model else name, "ready": self.ready})
        return (200 if self.ready else 503), body, JSON_HEADERS

    async def infer(self, scope: Scope, receive: Receive, name: str, version: str | None = None) -> Response:
        model = self._model(name, version)
        headers = _headers(scope)
        json_length = _binary_header(headers)
        body = await self._read_body(headers, receive, binary=json_length is not None)
        request = await self._decode(v2.decode_infer, body, model, self.limits, json_length)
        shadowed = self._shadowed(body, headers)
        del body  # the rows are all that is needed from here on (and the copy, when shadowing)
        request.id = request_id = _request_id(request.id, headers)
        result: Prediction = await self.batcher.submit(request.rows, request.count, proba=request.proba,
                                                       request_id=request_id)
        out, header_length = v2.encode_infer(model, request, result.predictions, result.probabilities)
        if shadowed is not None and self.mirror is not None:
            self.mirror.copy(scope["path"], shadowed, request_id, headers.get(b"content-type", JSON),
                             () if json_length is None else ((v2.BINARY_HEADER.encode(), str(json_length).encode()),))
        id_header = (b"x-request-id", request_id.encode())
        if header_length is None:
            return 200, out, [*JSON_HEADERS, id_header]
        return 200, out, [(b"content-type", OCTET_STREAM), (v2.BINARY_HEADER.encode(), str(header_length).encode()),
                          id_header]

    async def v1_status(self, scope: Scope, receive: Receive, name: str) -> Response:
        model = self._model(name, None, must_be_loaded=False)
        body = orjson.dumps(v1.model_status(model.name if model else name, self.ready))
        return (200 if self.ready else 503), body, JSON_HEADERS

    async def v1_predict(self, scope: Scope, receive: Receive, name: str) -> Response:
        model = self._model(name, None)
        headers = _headers(scope)
        body = await self._read_body(headers, receive, binary=False)
        rows, count = await self._decode(v1.decode_predict, body, model, self.limits)
        shadowed = self._shadowed(body, headers)
        del body
        request_id = _request_id(None, headers)
        result: Prediction = await self.batcher.submit(rows, count, request_id=request_id)
        if shadowed is not None and self.mirror is not None:
            self.mirror.copy(scope["path"], shadowed, request_id)
        return 200, v1.encode_predict(result.predictions, request_id), [*JSON_HEADERS,
                                                                        (b"x-request-id", request_id.encode())]

    async def feedback(self, scope: Scope, receive: Receive, name: str, version: str | None = None) -> Response:
        """Ground truth by prediction id (feedback.py): checked whole, then stored as one label segment."""
        model = self._model(name, version)
        outcomes = self.outcomes
        if outcomes is None:
            raise ClientError(404, f"feedback is off for model {name!r}: the ModelDeployment sets no "
                                   "spec.feedback.uri, so no prediction was recorded to attach a label to")
        # A flood of calls waits for the one feedback thread with its bodies in memory: a few at a time.
        if self.feedback_calls >= MAX_FEEDBACK_CALLS:
            self.metrics.refused.labels("feedback").inc()
            raise unavailable(f"{MAX_FEEDBACK_CALLS} feedback calls are already being stored; retry shortly")
        self.feedback_calls += 1
        try:
            body = await self._read_body(_headers(scope), receive, binary=False)
            loop = asyncio.get_running_loop()
            # Decoding 10,000 labels and the store calls take milliseconds to seconds: off the event loop.
            accepted = await loop.run_in_executor(outcomes.executor, self._store_feedback, body, model, outcomes)
        except ClientError:
            self.metrics.feedback.labels("refused").inc()
            raise
        except StorageError as exc:
            log_event("feedback.store-failed", level=logging.WARNING, error=str(exc))
            raise unavailable("the feedback store did not answer; nothing of this call was stored; retry") from None
        finally:
            self.feedback_calls -= 1
        self.metrics.feedback.labels("stored").inc(accepted)
        return 200, orjson.dumps({"accepted": accepted}), JSON_HEADERS

    def _store_feedback(self, body: bytes, model: ServedModel, outcomes: Outcomes) -> int:
        feedback = decode_feedback(body, model, max_ids=self.config.max_feedback_ids)
        unknown = outcomes.index.missing(hash_ids(feedback.ids), outcomes.recorder.unflushed_hashes())
        if unknown.any() and outcomes.index.complete:
            first = feedback.ids[int(unknown.argmax())]
            raise ClientError(422, f"{int(unknown.sum())} of {len(feedback.ids)} ids were not predicted by this "
                                   f"deployment within its maxDelay, e.g. {first!r}; nothing of this call was stored "
                                   "(a prediction is known to every replica about 2 s after it is served)")
        outcomes.labels.write(feedback.ids, feedback.labels, feedback.values)
        return len(feedback.ids)

    async def sketch(self, scope: Scope, receive: Receive, name: str | None = None, version: str | None = None
                     ) -> Response:
        if name is not None:
            self._model(name, version)
        if self.sketches is None:
            raise ClientError(503, "the model is not loaded yet; no sketch", headers=(RETRY_AFTER,))
        return 200, orjson.dumps(self.sketches.snapshot(), option=orjson.OPT_SERIALIZE_NUMPY), JSON_HEADERS

    async def performance(self, scope: Scope, receive: Receive, name: str, version: str | None = None) -> Response:
        """Live performance per version of the predictions made since `?since=<epoch ms>`, joined with their
        labels from the store (every replica's records): `{"since": ms, "versions": {"<v>": {"labelled": n,
        "metrics": {name: {value, low, high}}}}}`. For the operator's DriftMonitor, on the sketch port."""
        model = self._model(name, version)
        outcomes = self._outcomes_for(name, "no live performance")
        since = _query_int(_query(scope), "since", "epoch milliseconds")
        result = await self._on_feedback_thread(outcomes, outcomes.performance, model, since)
        body = {"since": since, "versions": {str(v): p for v, p in result.items()}}
        return 200, orjson.dumps(body), JSON_HEADERS

    async def served(self, scope: Scope, receive: Receive, name: str, version: str | None = None) -> Response:
        """This process's inference requests since `?since=<epoch ms>` (within the last 24 hours): counts, errors,
        client errors, shadow copies and the latency histogram (served.py). For the operator's champion/challenger
        analysis, on the sketch port."""
        self._model(name, version)
        sketches = self.sketches
        if sketches is None:
            raise ClientError(503, "the model is not loaded yet; nothing served", headers=(RETRY_AFTER,))
        since = _query_int(_query(scope), "since", "epoch milliseconds")
        body = {"modelVersion": sketches.model_version, "instance": sketches.instance, **self.served.window(since)}
        return 200, orjson.dumps(body), JSON_HEADERS

    async def compare(self, scope: Scope, receive: Receive, name: str, version: str | None = None) -> Response:
        """Two versions on the same prediction ids since `?since=<epoch ms>` (modelloop.outcomes.paired), read from
        the store as /performance reads it: `?champion=<version>&challenger=<version>`. For the operator's
        champion/challenger analysis, on the sketch port."""
        model = self._model(name, version)
        outcomes = self._outcomes_for(name, "no comparison of versions")
        query = _query(scope)
        since = _query_int(query, "since", "epoch milliseconds")
        champion = _query_int(query, "champion", "a version number", digits=9)
        challenger = _query_int(query, "challenger", "a version number", digits=9)
        if champion == challenger:
            raise ClientError(400, f"?champion= and ?challenger= are both version {champion}; compare two versions")
        since, paired = await self._on_feedback_thread(outcomes, outcomes.paired, model, since, champion, challenger)
        distance = paired.get("output_distance")
        differences = paired.get("loss_differences")
        body = {"since": since, "champion": champion, "challenger": challenger, "rows": paired["rows"],
                "agreed": paired.get("agreed"),
                # an infinite distance (the champion's outputs all equal, the challenger's not) has no JSON number
                "outputDistance": distance if distance is not None and math.isfinite(distance) else None,
                "championOnlyRight": paired.get("champion_only_right", 0),
                "challengerOnlyRight": paired.get("challenger_only_right", 0),
                "lossDifferences": list(differences) if differences is not None else None}
        return 200, orjson.dumps(body), JSON_HEADERS

    def _outcomes_for(self, name: str, what: str) -> Outcomes:
        if self.outcomes is None:
            raise ClientError(404, f"feedback is off for model {name!r} (spec.feedback.uri): {what}")
        return self.outcomes

    async def _on_feedback_thread(self, outcomes: Outcomes, read: Callable[..., Result], *args: Any) -> Result:
        """A read of the store's records, on the feedback thread (never on the event loop); 503 when the store does
        not answer."""
        try:
            return await asyncio.get_running_loop().run_in_executor(outcomes.executor, read, *args)
        except StorageError as exc:
            raise unavailable(f"the feedback store did not answer: {exc}") from None

    async def _maintain_records(self, every_seconds: float = 3600.0) -> None:
        """Once an hour: the closed hours' segments are compacted, and the days of records older than
        spec.feedback.retention are deleted (docs/outcomes.md)."""
        loop = asyncio.get_running_loop()
        while self.outcomes is not None:
            try:
                deleted = await loop.run_in_executor(self.outcomes.executor, self.outcomes.expire, every_seconds)
                if deleted:
                    log_event("records.expired", days=",".join(deleted))
                await loop.run_in_executor(self.outcomes.executor, self.outcomes.compact)
            except StorageError as exc:
                log_event("records.maintenance-failed", level=logging.WARNING, error=str(exc))
            except RuntimeError:  # the executor shut down: the server is stopping
                return
            await asyncio.sleep(every_seconds)

    async def prometheus(self, scope: Scope, receive: Receive) -> Response:
        return 200, self.metrics.exposition(), [(b"content-type", self.metrics.content_type.encode())]

    # -- helpers ------------------------------------------------------------------------------------

    def _shadowed(self, body: bytes | bytearray, headers: dict[bytes, bytes]) -> bytes | bytearray | None:
        """The body to copy to the challenger once answered: None without a mirror, and for a copy (never
        copied again)."""
        return body if self.mirror is not None and SHADOW_HEADER not in headers else None

    async def _decode(self, decode: Callable[..., Decoded], body: bytes | bytearray, *args: Any) -> Decoded:
        """`decode(body, *args)`: on the event loop for a small body, on the decoding thread for a large one."""
        if len(body) <= DECODE_OFF_LOOP_BYTES:
            return decode(body, *args)
        return await asyncio.get_running_loop().run_in_executor(self.decoder, decode, body, *args)

    def _refusal(self, error: ClientError | QueueFull) -> Response:
        """The answer to a refused request (headers with content-length); counted by the limit that refused it."""
        refused = error if isinstance(error, ClientError) else self._queue_full()
        if refused.limit is not None:
            self.metrics.refused.labels(refused.limit).inc()
        body = orjson.dumps({"error": refused.message})
        headers = [(b"content-type", JSON), (b"content-length", str(len(body)).encode()), *refused.headers]
        if refused.close:  # the unread body would be taken for the next request
            headers.append((b"connection", b"close"))
        return refused.status, body, headers

    def _queue_full(self) -> ClientError:
        self.metrics.refused.labels("queue").inc()
        return unavailable(f"the prediction queue is full ({self.config.max_queue} requests waiting, --max-queue); "
                           "retry shortly")

    def _model(self, name: str, version: str | None, *, must_be_loaded: bool = True) -> ServedModel | None:
        model = self.model
        known = model.name if model is not None else self.config.model_name
        if known is not None and name != known:
            raise ClientError(404, f"model {name!r} not found; this server serves {known!r}")
        if model is None:
            if must_be_loaded:
                raise unavailable(f"model {name!r} is not loaded yet; retry when /v2/health/ready is 200")
            return None
        if version is not None and version != str(model.version):
            raise ClientError(404, f"model {name!r} has no version {version!r}; this server serves version "
                                   f"{model.version}")
        return model

    async def _read_body(self, headers: dict[bytes, bytes], receive: Receive, *, binary: bool) -> bytes | bytearray:
        content_type = headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
        if not (content_type in (b"", JSON) or content_type.endswith(b"+json")
                or (binary and content_type == OCTET_STREAM)):
            allowed = "application/json" + (" or application/octet-stream" if binary else "")
            raise ClientError(415, f"content-type {content_type.decode('latin-1')!r} is not supported; send "
                                   f"{allowed} (with curl: -H 'Content-Type: application/json')")
        limit = self.config.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise over_limit("body_bytes", f"the request body has {int(declared)} bytes; the limit is {limit} "
                                           "(--max-body-bytes)", close=True)
        if body_received(receive):  # the whole body is already here (the usual case): reading cannot wait
            body = (await receive()).get("body", b"")
            if len(body) > limit:
                raise over_limit("body_bytes", f"the request body exceeds {limit} bytes (--max-body-bytes)", close=True)
            return body
        timeout = self.config.body_timeout_seconds
        try:  # a timer costs ~8 us a request (bench/limits): only a body still on its way needs one
            async with asyncio.timeout(timeout):
                return await _receive_body(receive, limit, int(declared) if declared and declared.isdigit() else None)
        except TimeoutError:
            self.metrics.refused.labels("body_timeout").inc()
            raise ClientError(408, f"the request body did not arrive within {timeout:g} s "
                                   "(--body-timeout-seconds)", close=True) from None


async def _receive_body(receive: Receive, limit: int, length: int | None) -> bytes | bytearray:
    """The body, `length` bytes when the headers said so. A body in parts is copied into one buffer as the
    parts arrive: joining them at the end would hold the event loop for a copy of the whole (~4 ms at 16 MiB)."""
    message = await receive()
    body = message.get("body", b"")
    if not message.get("more_body"):
        if len(body) > limit:
            raise over_limit("body_bytes", f"the request body exceeds {limit} bytes (--max-body-bytes)", close=True)
        return body
    buffer = bytearray(length) if length is not None else bytearray()
    size = 0
    while True:
        end = size + len(body)
        if end > limit:
            raise over_limit("body_bytes", f"the request body exceeds {limit} bytes (--max-body-bytes)", close=True)
        buffer[size:end] = body
        size = end
        if not message.get("more_body"):
            break
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientError(400, "the client disconnected before sending the whole body", close=True)
        body = message.get("body", b"")
    del buffer[size:]  # (the body was shorter than its content-length: the parser would not allow it)
    return buffer


Handler = Callable[..., Awaitable[Response]]
_V2_MODEL_ROUTES: dict[str, tuple[str, str, Handler]] = {
    "": ("GET", "", ModelServerApp.model_metadata),
    "ready": ("GET", "/ready", ModelServerApp.model_ready),
    "infer": ("POST", "/infer", ModelServerApp.infer),
    "feedback": ("POST", "/feedback", ModelServerApp.feedback),
    "sketch": ("GET", "/sketch", ModelServerApp.sketch),
    "performance": ("GET", "/performance", ModelServerApp.performance),
    "served": ("GET", "/served", ModelServerApp.served),
    "compare": ("GET", "/compare", ModelServerApp.compare),
}
_FIXED_ROUTES: dict[str, tuple[str, Handler]] = {
    "/v2/health/live": ("GET", ModelServerApp.live),
    "/v2/health/ready": ("GET", ModelServerApp.server_ready),
    "/v2": ("GET", ModelServerApp.server_metadata),
    "/v2/": ("GET", ModelServerApp.server_metadata),
    "/metrics": ("GET", ModelServerApp.prometheus),
    "/sketch": ("GET", ModelServerApp.sketch),
}


# Routes of the sketch port (open to the operator only), which serves nothing else.
_SKETCH_PORT_ONLY = frozenset({ModelServerApp.sketch, ModelServerApp.performance, ModelServerApp.served,
                               ModelServerApp.compare})
# Routes that predict: counted against --max-concurrency (health, metadata and metrics never are).
_INFERENCE = frozenset({ModelServerApp.infer, ModelServerApp.v1_predict})


def match_route(method: str, path: str) -> tuple[str, Handler, dict[str, str]]:
    """(route template for metrics, handler, path parameters); ClientError 404 or 405 when none fits."""
    fixed = _FIXED_ROUTES.get(path)
    if fixed is not None:
        return _allow(method, fixed[0], path, fixed[1], {})
    parts = path.strip("/").split("/")
    if len(parts) >= 3 and parts[0] == "v2" and parts[1] == "models" and parts[2]:
        params = {"name": parts[2]}
        rest = parts[3:]
        template = "/v2/models/{name}"
        if len(rest) >= 2 and rest[0] == "versions" and rest[1]:
            params["version"] = rest[1]
            template += "/versions/{version}"
            rest = rest[2:]
        if len(rest) <= 1:
            route = _V2_MODEL_ROUTES.get(rest[0] if rest else "")
            if route is not None:
                return _allow(method, route[0], template + route[1], route[2], params)
    if len(parts) == 3 and parts[0] == "v1" and parts[1] == "models" and parts[2]:
        name, colon, verb = parts[2].partition(":")
        if not colon:
            return _allow(method, "GET", "/v1/models/{name}", ModelServerApp.v1_status, {"name": name})
        if verb == "predict" and name:
            return _allow(method, "POST", "/v1/models/{name}:predict", ModelServerApp.v1_predict, {"name": name})
    raise ClientError(404, f"no such endpoint: {method} {path}; see /v2 (Open Inference Protocol) and "
                           "/v1/models/{name}:predict")


def _allow(method: str, allowed: str, route: str, handler: Handler, params: dict[str, str]
           ) -> tuple[str, Handler, dict[str, str]]:
    if method != allowed:
        raise ClientError(405, f"{method} is not allowed on {route}; use {allowed}")
    return route, handler, params


def _mirror(config: ServerConfig, metrics: ServerMetrics) -> ShadowMirror | None:
    if config.shadow_to is None:
        return None
    host, _, port = config.shadow_to.rpartition(":")
    counters = {outcome: metrics.shadow.labels(outcome) for outcome in SHADOW_OUTCOMES}  # labels() once, not a copy
    return ShadowMirror(host.strip("[]"), int(port), config.shadow_fraction,
                        on_outcome=lambda outcome, n: counters[outcome].inc(n))


def _headers(scope: Scope) -> dict[bytes, bytes]:
    """The request's headers by (lower-case) name, made once a request (_http and the handler both look)."""
    headers = scope.get("modelloop.headers")
    if headers is None:
        headers = scope["modelloop.headers"] = dict(scope["headers"])
    return headers


# Generated request ids: 80 random bits per process and a counter (32 hex digits), unique across replicas and
# restarts, and a fifth of uuid4's cost on the hot path.
_ID_PREFIX = secrets.token_hex(10)
_ID_COUNTER = itertools.count()


def _request_id(given: str | None, headers: dict[bytes, bytes]) -> str:
    """The request's id: the V2 body's `id`, else the X-Request-Id header, else a new one. Its rows are the
    predictions `<id>:<row>` (docs/outcomes.md)."""
    if given is None:
        header = headers.get(b"x-request-id")
        if header is None:
            return f"{_ID_PREFIX}{next(_ID_COUNTER):012x}"
        given = header.decode("latin-1")
    if not REQUEST_ID.match(given):
        raise ClientError(400, "the request id ('id' or X-Request-Id) must be 1-128 printable ASCII characters "
                               "without spaces")
    return given


def _query(scope: Scope) -> dict[str, str]:
    return dict(part.split("=", 1) for part in scope.get("query_string", b"").decode("latin-1").split("&")
                if "=" in part)


def _query_int(query: dict[str, str], name: str, what: str, *, digits: int = 15) -> int:
    """`?name=` as a whole number of at most `digits` ASCII digits; 400 otherwise."""
    value = query.get(name, "")
    if not (value.isascii() and value.isdigit() and len(value) <= digits):
        raise ClientError(400, f"?{name}=<{what}> is required, as at most {digits} digits")
    return int(value)


def _binary_header(headers: dict[bytes, bytes]) -> int | None:
    value = headers.get(v2.BINARY_HEADER.encode())
    if value is None:
        return None
    if not value.strip().isdigit():
        raise ClientError(400, f"{v2.BINARY_HEADER} must be a byte count, got {value.decode('latin-1')!r}")
    return int(value)


def _prediction_edges(model: ServedModel) -> list[float]:
    reference = model.metadata.get("predictionReference") or {}
    for feature in reference.get("features", []):
        if feature.get("kind") == "numeric":
            return [float(e) for e in feature.get("edges", [])]
    return []
