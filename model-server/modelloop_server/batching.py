"""Adaptive batching: concurrent requests are merged into one prediction call, run on one worker thread
so that the event loop keeps answering health checks and metrics while a model predicts.

How a batch forms:
- While the worker is busy, arriving requests queue. When it frees, it takes the queued requests in
  arrival order, up to `max_batch_size` rows (the batch size follows the load by itself).
- When the worker is idle, the batch waits for company only as long as company is expected: until it
  holds as many requests as were pending at once since the previous batch started (the recent
  concurrency), or `max_batch_size` rows, or its oldest request has waited `max_wait` seconds,
  whichever comes first. So a lone client is never delayed, 8 clients in lock-step are predicted
  together as soon as the 8th arrives, and `max_wait` bounds the wait when fewer come than expected
  (the expectation then drops to what did come). `max_wait` 0 never waits.
- A request larger than `max_batch_size` rows runs alone; requests are never split.
- At most `max_queue` requests wait for a prediction call; `submit` refuses more (QueueFull) at once, so
  under overload a client learns it in microseconds instead of timing out behind a queue that only grows.

One worker thread, not a pool: scikit-learn's predict holds the GIL for much of its work, so a second
thread would mostly contend with the event loop, and one thread keeps the model free of concurrent calls.

Deadline (`timeout`, server.inferenceTimeout): a prediction call running longer has its requests answered 504
at once. An onnxruntime run on the worker, a batch's or the warm-up's, is terminated (onnx_model.cancel_runs:
it stops within a node's time). scikit-learn cannot be interrupted: while the worker is still in a call past
its deadline, the batcher is `stuck`: new and queued requests get 503 and the server's liveness fails, so the
kubelet restarts the container. A watch on the event loop checks every quarter of the timeout (at most 1 s).
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from modelloop.artifacts.onnx_model import cancel_runs, resume_runs, running_since

from .errors import ClientError, unavailable
from .logs import log_event

@dataclass(eq=False)
class Job:
    """One request's rows waiting for, or in, a prediction call."""

    rows: Any
    count: int
    proba: bool
    future: asyncio.Future = field(repr=False)
    arrived: float = 0.0
    request_id: str = ""  # its rows are predictions <request_id>:<row> (recorded when feedback is on)


# Runs on the worker thread: one result (or exception) per job, in order.
RunBatch = Callable[[Sequence[Job]], Sequence[Any]]


class QueueFull(Exception):
    """`max_queue` requests already wait for a prediction call."""


class Batcher:
    def __init__(self, *, max_batch_size: int, max_wait: float, run: RunBatch | None = None,
                 max_queue: int | None = None, timeout: float | None = None) -> None:
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait
        self.max_queue = max_queue
        self.timeout = timeout  # seconds a prediction call may take (server.inferenceTimeout); None: no deadline
        self.run = run
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="predict")
        self._worker: int | None = None  # the worker thread's id
        self._call_started: float | None = None  # time.monotonic() when the running prediction call started
        self._calling: list[Job] = []  # the jobs of that call
        self._watch: asyncio.Task | None = None
        self._queue: deque[Job] = deque()
        self._queued_rows = 0
        self._pending = 0  # submitted and not yet answered
        self._concurrency = 1  # most requests pending at once since the previous batch started
        self._wakeup: asyncio.Future | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._dispatch(), name="batcher")
        # the worker's first task (before the model's load and warm-up, which run on it too): learn its id
        self.executor.submit(self._remember_worker)
        if self.timeout is not None:
            self._watch = self._loop.create_task(self._watch_deadline(), name="batcher-deadline")

    @property
    def stuck(self) -> bool:
        """The worker is in a prediction call, or an onnxruntime run, past the deadline."""
        if self.timeout is None:
            return False
        started = self._call_started
        if started is None and self._worker is not None:
            started = running_since(self._worker)  # the warm-up's run
        return started is not None and time.monotonic() - started > self.timeout

    async def submit(self, rows: Any, count: int, *, proba: bool = False, request_id: str = "") -> Any:
        """Queue `count` rows for prediction and wait for their result; QueueFull when the queue is full,
        ClientError 503 while the worker is stuck."""
        loop = self._loop
        assert loop is not None and self.run is not None, "Batcher.start() and .run come first"
        if self._call_started is not None and self.stuck:
            raise self._stuck_error()
        if self.max_queue is not None and len(self._queue) >= self.max_queue:
            raise QueueFull(f"{len(self._queue)} requests are waiting for a prediction call")
        job = Job(rows, count, proba, loop.create_future(), loop.time(), request_id)
        self._queue.append(job)
        self._queued_rows += count
        self._pending += 1
        if self._pending > self._concurrency:
            self._concurrency = self._pending
        self._wake()
        try:
            return await job.future
        finally:
            self._pending -= 1

    async def close(self) -> None:
        """Stop dispatching (after the queue is empty, when the server drained) and free the worker."""
        while self._queue:
            await asyncio.sleep(0.01)
        for task in (self._task, self._watch):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        self.executor.shutdown(wait=True)

    # -- on the event loop --------------------------------------------------------------------------

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    async def _sleep_until_woken(self, timeout: float | None) -> None:
        loop = self._loop
        assert loop is not None
        self._wakeup = loop.create_future()
        timer = loop.call_later(timeout, self._wake) if timeout is not None else None
        try:
            await self._wakeup
        finally:
            if timer is not None:
                timer.cancel()

    async def _dispatch(self) -> None:
        loop = self._loop
        assert loop is not None
        while True:
            if not self._queue:
                await self._sleep_until_woken(None)
                continue
            if self.max_wait > 0:
                deadline = self._queue[0].arrived + self.max_wait
                while (len(self._queue) < self._concurrency and self._queued_rows < self.max_batch_size
                       and (left := deadline - loop.time()) > 0):
                    await self._sleep_until_woken(left)
            jobs = self._take()
            self._concurrency = max(1, self._pending)
            self._calling = jobs
            try:
                await loop.run_in_executor(self.executor, self._run_on_worker, jobs)
            except RuntimeError:  # executor shut down under us: only during process exit
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(RuntimeError("the server is shutting down"))
                raise
            finally:
                self._calling = []  # answered: their rows are not kept

    def _take(self) -> list[Job]:
        jobs = [self._queue.popleft()]
        rows = jobs[0].count
        while self._queue and rows + self._queue[0].count <= self.max_batch_size:
            job = self._queue.popleft()
            jobs.append(job)
            rows += job.count
        self._queued_rows -= rows
        return jobs

    async def _watch_deadline(self) -> None:
        assert self.timeout is not None
        every = min(1.0, self.timeout / 4)
        while True:
            await asyncio.sleep(every)
            if not self.stuck:
                continue
            worker = self._worker
            if worker is not None:  # an onnxruntime run stops; scikit-learn's runs on
                cancel_runs(worker)
            expired = [job for job in self._calling if not job.future.done()] if self._call_started else []
            if expired:
                log_event("inference.timeout", level=logging.WARNING, seconds=self.timeout, requests=len(expired),
                          rows=sum(job.count for job in expired))
                for job in expired:
                    job.future.set_exception(ClientError(504, (
                        f"the prediction did not finish within {self.timeout:g} s (server.inferenceTimeout, "
                        f"--inference-timeout-seconds); it was cancelled")))
            while self._queue:  # nothing predicts them while the worker is stuck; another pod may
                job = self._queue.popleft()
                self._queued_rows -= job.count
                if not job.future.done():
                    job.future.set_exception(self._stuck_error())

    def _stuck_error(self) -> ClientError:
        return unavailable(f"the prediction worker is stuck in a call past server.inferenceTimeout "
                           f"({self.timeout:g} s); liveness fails until it returns; retry on another replica")

    @staticmethod
    def _resolve(jobs: Sequence[Job], results: Sequence[Any]) -> None:
        for job, result in zip(jobs, results):
            if job.future.done():  # the request was cancelled meanwhile
                continue
            if isinstance(result, BaseException):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)

    # -- on the worker thread -----------------------------------------------------------------------

    def _remember_worker(self) -> None:
        self._worker = threading.get_ident()

    def _run_on_worker(self, jobs: list[Job]) -> None:
        loop, run = self._loop, self.run
        assert loop is not None and run is not None
        resume_runs(threading.get_ident())  # a cancellation ends with the call it was for
        self._call_started = time.monotonic()
        try:
            results: Sequence[Any] = run(jobs)
        except Exception as exc:  # noqa: BLE001 - handed to the waiting requests; the batcher keeps going
            results = [exc] * len(jobs)
        finally:
            self._call_started = None
        loop.call_soon_threadsafe(self._resolve, jobs, results)
