"""The dynamic batcher: requests queue per model version and run together.

A batch starts as soon as an executor is free: an idle model adds no delay. While every executor
is busy, requests pile up and form the next batch. With `max_queue_delay_ms` and several
executors, a free executor holds a partial batch up to that delay while another batch runs, to
fill it. Expired or abandoned requests are dropped before they cost compute; a full queue
refuses at once. Each batch is traced as a span of its own, linked to the span of every
request it served (with that request's queue wait), and its size and waits are observed.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from opentelemetry.trace import Link, SpanContext

from adapters.batching.merge import batch_key, concat, rows_of, split
from gateway.errors import BackendError, DeadlineExceeded, GatewayError, QueueFull, Unavailable
from gateway.model_config import BatchingConfig
from gateway.telemetry import spans
from gateway.types import Tensors

log = logging.getLogger(__name__)

#: Runs one merged batch; called on an executor thread (ONNX Runtime releases the GIL), or on
#: the event loop when it is cheap and the batcher is `inline`.
RunBatch = Callable[[Tensors], Tensors]
#: With `inline`, a batch whose run (merge, model, split) should cost less CPU than this (its
#: rows times a moving average of the CPU per row) runs on the event loop: handing it to an
#: executor thread and back costs the loop more (two thread wake-ups, the GIL handed over
#: twice) than such a model does, and the loop is held no longer than a small request's JSON
#: decode holds it. Per row, so a large batch of a cheap model still leaves the loop.
INLINE_BELOW_S = 100e-6


@dataclass(slots=True, eq=False)
class _Pending:
    inputs: Tensors
    rows: int
    key: Hashable
    deadline: float
    future: asyncio.Future[Tensors]
    span: SpanContext | None  # the request's, for the batch span to link to
    enqueued: float = field(default_factory=time.monotonic)


class BatchObserver(Protocol):
    def batch_started(self, rows: int, waits: Iterable[float]) -> None:
        """A batch of `rows` starts; `waits`: how long each of its requests was queued."""


class DynamicBatcher:
    def __init__(self, run: RunBatch, config: BatchingConfig, *, name: str,
                 batchable: bool = True, observer: BatchObserver | None = None,
                 inline: bool = False) -> None:
        """`inline`: cheap batches may run on the event loop (`INLINE_BELOW_S`); only for a
        `run` whose cost does not jump (a model, not one that may block)."""
        self._run = run
        self._inline = inline
        self._row_cpu_s: float | None = None  # moving average; None until a batch has run
        self._name = name
        self._observer = observer
        self._max_rows = config.max_batch_size if batchable else 1
        self._max_queue = config.max_queue_size
        self._delay = config.max_queue_delay_ms / 1000.0
        self._slots = config.concurrent_batches
        self._executor = ThreadPoolExecutor(config.concurrent_batches,
                                            thread_name_prefix=f"batch-{name}")
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._in_flight = 0
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False
        self._drained = asyncio.Event()

    @property
    def depth(self) -> int:
        return len(self._queue)

    async def submit(self, inputs: Tensors, deadline: float) -> Tensors:
        """Queue one request and wait for its share of a batch's outputs."""
        if self._closing:
            raise Unavailable(f"model {self._name} is unloading", retry_after_s=1)
        if len(self._queue) >= self._max_queue:
            raise QueueFull(f"model {self._name}: queue is full ({self._max_queue} requests "
                            "waiting)", retry_after_s=1)
        future: asyncio.Future[Tensors] = asyncio.get_running_loop().create_future()
        rows = rows_of(inputs)
        self._queue.append(_Pending(inputs, rows, batch_key(inputs), deadline, future,
                                    spans.current_span_context()))
        self._queued_rows += rows
        self._dispatch()
        return await future

    async def close(self) -> None:
        """Refuse new requests, let queued and running ones finish, then stop the threads."""
        self._closing = True
        if self._queue or self._in_flight:
            self._dispatch()
            await self._drained.wait()
        self._executor.shutdown(wait=False)

    def _dispatch(self) -> None:
        while self._queue and self._in_flight < self._slots:
            if not self._ready_to_start():
                self._arm_timer()
                return
            batch = self._take_batch()
            if batch:
                self._in_flight += 1
                self._start(batch)
        self._check_drained()

    def _ready_to_start(self) -> bool:
        if self._in_flight == 0 or self._delay == 0 or self._closing:
            return True
        if self._queued_rows >= self._max_rows:
            return True
        return time.monotonic() - self._queue[0].enqueued >= self._delay

    def _arm_timer(self) -> None:
        if self._timer is None:
            loop = asyncio.get_running_loop()
            when = self._queue[0].enqueued + self._delay
            self._timer = loop.call_at(loop.time() + max(0.0, when - time.monotonic()),
                                       self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()

    def _take_batch(self) -> list[_Pending]:
        """Take the oldest live request and every later one that fits and matches its shape."""
        now = time.monotonic()
        batch: list[_Pending] = []
        keep: deque[_Pending] = deque()
        rows = 0
        key: Hashable = None
        while self._queue:
            item = self._queue.popleft()
            if item.future.done():  # the caller gave up (deadline or disconnect)
                self._queued_rows -= item.rows
                continue
            if item.deadline <= now:
                self._queued_rows -= item.rows
                item.future.set_exception(DeadlineExceeded(
                    f"model {self._name}: deadline passed while queued; dropped before compute"))
                continue
            if not batch:
                batch.append(item)
                rows, key = item.rows, item.key
            elif item.key == key and rows + item.rows <= self._max_rows:
                batch.append(item)
                rows += item.rows
            else:
                keep.append(item)
            if rows >= self._max_rows:
                break
        keep.extend(self._queue)
        self._queue = keep
        self._queued_rows -= rows
        return batch

    def _start(self, batch: list[_Pending]) -> None:
        """Run `batch` on the loop if it is cheap, else hand it to an executor thread, which
        returns it to the loop with one call: no task, no asyncio future and two fewer loop
        iterations per batch than awaiting `run_in_executor`. Either way it finishes in a
        later callback that keeps this context (the tracer bound for the request that started
        the batch), as a task would have."""
        rows = [item.rows for item in batch]
        now = time.monotonic()
        waits = [now - item.enqueued for item in batch]
        if self._observer is not None:
            self._observer.batch_started(sum(rows), waits)
        span = self._span(batch, waits, sum(rows))
        loop = asyncio.get_running_loop()
        if (self._inline and self._row_cpu_s is not None
                and self._row_cpu_s * sum(rows) < INLINE_BELOW_S):
            loop.call_soon(self._finish, batch, rows, self._compute(batch, rows, span))
            return
        self._executor.submit(self._execute, batch, rows, span, loop,
                              contextvars.copy_context())

    def _execute(self, batch: list[_Pending], rows: list[int], span: spans.ScopeOrOff,
                 loop: asyncio.AbstractEventLoop, context: contextvars.Context) -> None:
        """On an executor thread."""
        loop.call_soon_threadsafe(self._finish, batch, rows, self._compute(batch, rows, span),
                                  context=context)

    def _compute(self, batch: list[_Pending], rows: list[int],
                 span: spans.ScopeOrOff) -> list[Tensors] | Exception:
        """Merge, run and split the batch; its CPU time per row (the thread's own: waits for
        the GIL do not count) feeds the moving average that decides where the next runs."""
        started = time.thread_time()
        outcome: list[Tensors] | Exception
        try:
            with span:
                outputs = self._run(concat([item.inputs for item in batch]))
            outcome = split(outputs, rows)
        except Exception as exc:  # judged on the loop, where log lines find the request id
            outcome = exc
        per_row = (time.thread_time() - started) / max(sum(rows), 1)
        average = self._row_cpu_s
        self._row_cpu_s = per_row if average is None else average + (per_row - average) / 8
        return outcome

    def _finish(self, batch: list[_Pending], rows: list[int],
                outcome: list[Tensors] | Exception) -> None:
        if isinstance(outcome, list):
            for item, result in zip(batch, outcome, strict=True):
                if not item.future.done():  # not abandoned by its caller meanwhile
                    item.future.set_result(result)
        else:
            error = outcome
            if not isinstance(error, GatewayError):  # a failing batch fails only its requests
                log.warning("model %s: batch of %d rows failed: %s", self._name, sum(rows),
                            error)
                error = BackendError(f"model {self._name} failed: {error}")
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
        self._in_flight -= 1
        self._dispatch()

    def _span(self, batch: list[_Pending], waits: list[float], rows: int) -> spans.ScopeOrOff:
        if spans.tracer() is None:  # the common case when off: skip building the links
            return spans.OFF
        links = [Link(item.span, {"gateway.batch.queue_wait_s": wait,
                                  "gateway.batch.rows": item.rows})
                 for item, wait in zip(batch, waits, strict=True) if item.span is not None]
        return spans.batch(f"batch {self._name}", links, {
            "gateway.batcher": self._name, "gateway.batch.size": rows,
            "gateway.batch.requests": len(batch), "gateway.batch.queue_wait_s": max(waits)})

    def _check_drained(self) -> None:
        if self._closing and not self._queue and self._in_flight == 0:
            self._drained.set()
