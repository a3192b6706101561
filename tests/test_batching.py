"""DynamicBatcher: batched results equal unbatched ones, and the scheduling promises hold."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext

from adapters.batching import DynamicBatcher
from adapters.batching.dynamic import INLINE_BELOW_S
from adapters.batching.merge import split
from adapters.onnx.session import SessionSettings, load_session
from gateway.errors import BackendError, DeadlineExceeded, QueueFull, Unavailable
from gateway.model_config import BatchingConfig
from gateway.telemetry import request_ids, spans
from gateway.types import Tensors
from tests.onnx_models import demo_bytes
from tests.waiting import wait_until

FAR = 1e12  # a deadline nobody reaches


def rowwise(feeds: Tensors) -> Tensors:
    """A model whose every output row depends only on its input row."""
    x = feeds["x"]
    return {"y": x * 2.0 + 1.0, "s": x.sum(axis=tuple(range(1, x.ndim))).reshape(-1, 1)}


class GatedRun:
    """A run function that records each batch and can hold executors until released."""

    def __init__(self, fn: Callable[[Tensors], Tensors] = rowwise) -> None:
        self.fn = fn
        self.batches: list[Tensors] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, feeds: Tensors) -> Tensors:
        self.batches.append(feeds)
        self.entered.set()
        self.gate.wait(10)
        return self.fn(feeds)


def requests_strategy() -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(min_value=0, max_value=6), min_size=1, max_size=24)


@settings(max_examples=60, deadline=None)
@given(rows=requests_strategy(), max_batch=st.integers(1, 9), slots=st.integers(1, 3),
       delay=st.sampled_from([0.0, 0.5]), order=st.randoms(use_true_random=False))
def test_batched_equals_unbatched(rows: list[int], max_batch: int, slots: int, delay: float,
                                  order: object) -> None:
    rng = np.random.default_rng(len(rows) * 31 + max_batch)
    payloads = [rng.standard_normal((n, 3)).astype(np.float32) for n in rows]
    arrival = list(range(len(rows)))
    order.shuffle(arrival)  # type: ignore[attr-defined]

    async def scenario() -> list[Tensors]:
        batcher = DynamicBatcher(rowwise, BatchingConfig(
            max_batch_size=max_batch, max_queue_delay_ms=delay, max_queue_size=1000,
            concurrent_batches=slots), name="prop")
        tasks: dict[int, asyncio.Task[Tensors]] = {}
        for i in arrival:
            tasks[i] = asyncio.create_task(batcher.submit({"x": payloads[i]}, FAR))
            if i % 3 == 0:
                await asyncio.sleep(0)  # let some batches start between arrivals
        results = [await tasks[i] for i in range(len(rows))]
        await batcher.close()
        return results

    results = asyncio.run(scenario())
    for payload, result in zip(payloads, results, strict=True):
        expected = rowwise({"x": payload})
        assert result["y"].shape == expected["y"].shape
        np.testing.assert_array_equal(result["y"], expected["y"])
        np.testing.assert_allclose(result["s"], expected["s"], rtol=1e-6)


@settings(max_examples=20, deadline=None)
@given(rows=st.lists(st.integers(1, 5), min_size=1, max_size=12))
def test_batched_equals_unbatched_on_onnx_runtime(rows: list[int]) -> None:
    session = load_session(demo_bytes(), SessionSettings())
    rng = np.random.default_rng(sum(rows))
    payloads = [rng.standard_normal((n, 4)).astype(np.float32) for n in rows]

    async def scenario() -> list[Tensors]:
        batcher = DynamicBatcher(session.run, BatchingConfig(max_batch_size=16), name="demo")
        results = await asyncio.gather(*(batcher.submit({"x": p}, FAR) for p in payloads))
        await batcher.close()
        return list(results)

    for payload, result in zip(payloads, asyncio.run(scenario()), strict=True):
        alone = session.run({"x": payload})
        np.testing.assert_allclose(result["probabilities"], alone["probabilities"], rtol=1e-6)


async def test_idle_batcher_starts_at_once_despite_queue_delay() -> None:
    run = GatedRun()
    batcher = DynamicBatcher(run, BatchingConfig(max_queue_delay_ms=60_000,
                                                 concurrent_batches=2), name="idle")
    async with asyncio.timeout(5):  # would hang for a minute if it waited for the delay
        result = await batcher.submit({"x": np.ones((1, 2), np.float32)}, FAR)
    assert result["y"].tolist() == [[3.0, 3.0]]
    await batcher.close()


async def test_requests_arriving_while_busy_form_the_next_batch() -> None:
    run = GatedRun()
    run.gate.clear()
    batcher = DynamicBatcher(run, BatchingConfig(max_batch_size=8), name="busy")
    first = asyncio.create_task(batcher.submit({"x": np.zeros((1, 2), np.float32)}, FAR))
    await wait_until(run.entered.is_set)
    rest = [asyncio.create_task(batcher.submit({"x": np.full((2, 2), i, np.float32)}, FAR))
            for i in range(4)]
    await wait_until(lambda: batcher.depth == 4)
    run.gate.set()
    await asyncio.gather(first, *rest)
    assert [b["x"].shape[0] for b in run.batches] == [1, 8]
    for i, task in enumerate(rest):
        assert task.result()["y"].tolist() == [[2 * i + 1] * 2] * 2
    await batcher.close()


class Observed:
    def __init__(self) -> None:
        self.batches: list[tuple[int, list[float]]] = []

    def batch_started(self, rows: int, waits: Iterable[float]) -> None:
        self.batches.append((rows, list(waits)))


async def test_each_batch_is_a_span_linked_to_every_request_it_served() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    run, observed = GatedRun(), Observed()
    run.gate.clear()
    batcher = DynamicBatcher(run, BatchingConfig(max_batch_size=8), name="traced",
                             observer=observed)

    async def request(rows: int) -> SpanContext:
        with tracer.start_as_current_span("request") as span:
            await batcher.submit({"x": np.zeros((rows, 2), np.float32)}, FAR)
            return span.get_span_context()

    token = spans.bind(tracer)  # as a front door does; the tasks below inherit it
    first = asyncio.create_task(request(1))
    await wait_until(run.entered.is_set)
    rest = [asyncio.create_task(request(2)) for _ in range(3)]
    await wait_until(lambda: batcher.depth == 3)
    run.gate.set()
    served = await asyncio.gather(first, *rest)
    spans.unbind(token)
    await batcher.close()

    alone, together = [s for s in exporter.get_finished_spans() if s.name == "batch traced"]
    assert [link.context.span_id for link in alone.links] == [served[0].span_id]
    assert [link.context.span_id for link in together.links] == [c.span_id for c in served[1:]]
    assert together.parent is None and together.context.trace_id not in {
        c.trace_id for c in served}
    assert together.attributes is not None
    assert (together.attributes["gateway.batch.size"],
            together.attributes["gateway.batch.requests"]) == (6, 3)
    waits = [link.attributes["gateway.batch.queue_wait_s"] for link in together.links
             if link.attributes is not None]
    assert len(waits) == 3 and together.attributes["gateway.batch.queue_wait_s"] == max(waits)
    assert [(rows, len(waits)) for rows, waits in observed.batches] == [(1, 1), (6, 3)]
    assert observed.batches[1][1] == waits


async def test_untraced_requests_make_no_batch_spans() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    batcher = DynamicBatcher(GatedRun(), BatchingConfig(), name="plain")
    with provider.get_tracer("test").start_as_current_span("request"):  # but no tracer bound
        await batcher.submit({"x": np.zeros((1, 2), np.float32)}, FAR)
    await batcher.close()
    assert [s.name for s in exporter.get_finished_spans()] == ["request"]


async def test_different_inner_shapes_are_never_mixed() -> None:
    run = GatedRun(lambda feeds: {"y": feeds["x"].copy()})
    run.gate.clear()
    batcher = DynamicBatcher(run, BatchingConfig(max_batch_size=32), name="shapes")
    blocker = asyncio.create_task(batcher.submit({"x": np.zeros((1, 2), np.float32)}, FAR))
    await wait_until(run.entered.is_set)
    shapes = [(1, 2), (1, 3), (2, 2), (1, 3), (1, 2)]
    tasks = [asyncio.create_task(batcher.submit({"x": np.ones(s, np.float32)}, FAR))
             for s in shapes]
    await wait_until(lambda: batcher.depth == len(shapes))
    run.gate.set()
    await asyncio.gather(blocker, *tasks)
    assert sorted(b["x"].shape for b in run.batches[1:]) == [(2, 3), (4, 2)]
    assert [t.result()["y"].shape for t in tasks] == shapes
    await batcher.close()


async def test_expired_request_is_dropped_before_compute() -> None:
    run = GatedRun()
    run.gate.clear()
    batcher = DynamicBatcher(run, BatchingConfig(), name="expiry")
    blocker = asyncio.create_task(batcher.submit({"x": np.zeros((1, 2), np.float32)}, FAR))
    await wait_until(run.entered.is_set)
    # Queued while the executor is busy; its deadline passes before an executor frees up.
    expired = asyncio.create_task(batcher.submit({"x": np.full((1, 2), 7, np.float32)},
                                                 time.monotonic() - 0.001))
    live = asyncio.create_task(batcher.submit({"x": np.ones((1, 2), np.float32)}, FAR))
    await wait_until(lambda: batcher.depth == 2)
    run.gate.set()
    with pytest.raises(DeadlineExceeded, match="dropped before compute"):
        await expired
    await asyncio.gather(blocker, live)
    assert all(7 not in b["x"] for b in run.batches)
    await batcher.close()


async def test_full_queue_refuses_at_once_with_retry_after() -> None:
    run = GatedRun()
    run.gate.clear()
    batcher = DynamicBatcher(run, BatchingConfig(max_queue_size=2), name="full")
    tasks = [asyncio.create_task(batcher.submit({"x": np.ones((1, 2), np.float32)}, FAR))]
    await wait_until(run.entered.is_set)
    tasks += [asyncio.create_task(batcher.submit({"x": np.ones((1, 2), np.float32)}, FAR))
              for _ in range(2)]
    await wait_until(lambda: batcher.depth == 2)
    with pytest.raises(QueueFull) as refused:
        await batcher.submit({"x": np.ones((1, 2), np.float32)}, FAR)
    assert refused.value.retry_after_s and refused.value.http_status == 503
    run.gate.set()
    await asyncio.gather(*tasks)
    await batcher.close()


async def test_a_failing_batch_fails_only_its_own_requests() -> None:
    def fragile(feeds: Tensors) -> Tensors:
        if (feeds["x"] < 0).any():
            raise RuntimeError("negative input")
        return rowwise(feeds)

    run = GatedRun(fragile)
    run.gate.clear()
    batcher = DynamicBatcher(run, BatchingConfig(max_batch_size=2), name="fragile")
    tasks = [asyncio.create_task(batcher.submit({"x": np.full((1, 1), v, np.float32)}, FAR))
             for v in (1, -1, 2, 3, 4)]  # batches: [1], [-1, 2], [3, 4]
    await wait_until(lambda: batcher.depth == 4)
    run.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert [type(r).__name__ for r in results] == [
        "dict", "BackendError", "BackendError", "dict", "dict"]
    assert isinstance(results[1], BackendError) and "negative input" in results[1].message
    await batcher.close()


async def test_close_finishes_queued_requests_then_refuses() -> None:
    run = GatedRun()
    run.gate.clear()
    batcher = DynamicBatcher(run, BatchingConfig(max_batch_size=1), name="drain")
    tasks = [asyncio.create_task(batcher.submit({"x": np.ones((1, 2), np.float32)}, FAR))
             for _ in range(3)]
    await wait_until(lambda: run.entered.is_set() and batcher.depth == 2)
    closing = asyncio.create_task(batcher.close())
    await asyncio.sleep(0)
    with pytest.raises(Unavailable):
        await batcher.submit({"x": np.ones((1, 2), np.float32)}, FAR)
    run.gate.set()
    await closing
    assert all(t.result()["y"].shape == (1, 2) for t in tasks)


@given(rows=st.lists(st.integers(0, 5), min_size=1, max_size=10))
def test_split_gives_each_request_a_view_of_its_rows(rows: list[int]) -> None:
    outputs = {"y": np.arange(sum(rows) * 2).reshape(-1, 2), "z": np.arange(sum(rows))}
    pieces = split(outputs, rows)
    assert [p["y"].shape[0] for p in pieces] == [p["z"].shape[0] for p in pieces] == rows
    np.testing.assert_array_equal(np.concatenate([p["y"] for p in pieces]), outputs["y"])
    assert all(p["y"].base is not None for p in pieces)  # views, not copies


def test_split_refuses_outputs_without_the_batch_dim() -> None:
    with pytest.raises(BackendError, match=r"output 's' has shape \[\], which does not keep "
                                           r"the batch of 3 rows: the model cannot be batched"):
        split({"y": np.zeros((3, 1)), "s": np.zeros(())}, [1, 2])


async def test_a_failing_batch_is_logged_for_the_request_that_started_it() -> None:
    def broken(feeds: Tensors) -> Tensors:
        raise RuntimeError("no such kernel")

    seen: list[str] = []

    class RequestIds(logging.Handler):  # what a log line's formatter reads when it is written
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(request_ids.current())

    handler = RequestIds()
    logging.getLogger("adapters.batching.dynamic").addHandler(handler)
    batcher = DynamicBatcher(broken, BatchingConfig(), name="broken")
    token = request_ids.bind("r-42")
    try:
        with pytest.raises(BackendError, match="model broken failed: no such kernel"):
            await batcher.submit({"x": np.zeros((1, 2), np.float32)}, FAR)
    finally:
        request_ids.unbind(token)
        logging.getLogger("adapters.batching.dynamic").removeHandler(handler)
    await batcher.close()
    assert seen == ["r-42"]


def _threads_of(fn: Callable[[Tensors], Tensors],
                ran_on: list[int]) -> Callable[[Tensors], Tensors]:
    def run(feeds: Tensors) -> Tensors:
        ran_on.append(threading.get_ident())
        return fn(feeds)

    return run


async def test_cheap_batches_run_on_the_loop_once_measured() -> None:
    """An inline batcher hands its first batch to an executor (nothing measured yet); a model
    that costs less than `INLINE_BELOW_S` then runs on the loop's own thread (once the moving
    average has forgotten a cold first run), and stays there, with the same answers, failures
    included."""
    ran_on: list[int] = []
    batcher = DynamicBatcher(_threads_of(rowwise, ran_on), BatchingConfig(), name="cheap",
                             inline=True)
    try:
        for value in range(40):
            x = np.full((1, 3), value, np.float32)
            out = await batcher.submit({"x": x}, FAR)
            np.testing.assert_array_equal(out["y"], x * 2.0 + 1.0)
    finally:
        await batcher.close()
    loop_thread = threading.get_ident()
    first_inline = ran_on.index(loop_thread)
    assert first_inline >= 1 and len(ran_on) - first_inline >= 10
    assert ran_on[first_inline:] == [loop_thread] * (len(ran_on) - first_inline)

    def broken(feeds: Tensors) -> Tensors:
        raise RuntimeError("bad input")

    batcher = DynamicBatcher(broken, BatchingConfig(), name="broken", inline=True)
    try:
        for _ in range(3):
            with pytest.raises(BackendError, match="model broken failed: bad input"):
                await batcher.submit({"x": np.zeros((1, 3), np.float32)}, FAR)
    finally:
        await batcher.close()


async def test_costly_batches_stay_on_executor_threads() -> None:
    """A model that costs more CPU than `INLINE_BELOW_S` per row never holds the loop."""
    def costly(feeds: Tensors) -> Tensors:
        started = time.thread_time()
        while time.thread_time() - started < 3 * INLINE_BELOW_S:
            pass
        return rowwise(feeds)

    ran_on = await _threads_running_four_rows(costly, inline=True)
    assert len(ran_on) == 4 and threading.get_ident() not in ran_on


async def test_a_large_batch_of_a_cheap_model_leaves_the_loop() -> None:
    """Measured cheap per row, a model still runs on an executor for a batch whose rows would
    cost more than `INLINE_BELOW_S` in all."""
    ran_on: list[int] = []
    batcher = DynamicBatcher(_threads_of(rowwise, ran_on), BatchingConfig(
        max_batch_size=1 << 20), name="rows", inline=True)
    try:
        loop_thread = threading.get_ident()
        for _ in range(40):
            await batcher.submit({"x": np.ones((1, 3), np.float32)}, FAR)
        assert ran_on[-1] == loop_thread
        # a one-row batch costs microseconds of Python at least, so 10,000 rows are
        # estimated far above INLINE_BELOW_S
        await batcher.submit({"x": np.ones((10_000, 3), np.float32)}, FAR)
        assert ran_on[-1] != loop_thread
    finally:
        await batcher.close()


async def test_batchers_run_on_threads_unless_inline() -> None:
    ran_on = await _threads_running_four_rows(rowwise, inline=False)
    assert len(ran_on) == 4 and threading.get_ident() not in ran_on


async def _threads_running_four_rows(model: Callable[[Tensors], Tensors],
                                     inline: bool) -> list[int]:
    """The threads that ran four one-row requests, submitted one after another."""
    ran_on: list[int] = []
    batcher = DynamicBatcher(_threads_of(model, ran_on), BatchingConfig(), name="rows",
                             inline=inline)
    try:
        for _ in range(4):
            await batcher.submit({"x": np.ones((1, 3), np.float32)}, FAR)
    finally:
        await batcher.close()
    return ran_on
