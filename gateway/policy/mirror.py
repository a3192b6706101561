"""Mirroring (shadow traffic): a copy of a sampled request goes to another target after the
primary answered; its reply is only timed and compared with the primary's, never returned.
Fire and forget: the client's reply never waits for it, a failing mirror fails nothing else,
and at most `max_in_flight` mirrored calls run at once (more are skipped and counted)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from gateway.policy.compare import compare_outputs
from gateway.policy.metrics import RoutingMetrics
from gateway.routing import Shadow, Target
from gateway.types import InferRequest, InferResponse, RequestContext

log = logging.getLogger(__name__)
#: Makes a request what a target takes (`Pipeline.prepare`): the mirror's target may take
#: the body as it is, or tensors decoded with its own signature.
Prepare = Callable[[InferRequest, Target], Awaitable[None]]


class Mirror:
    def __init__(self, metrics: RoutingMetrics, max_in_flight: int) -> None:
        self._metrics = metrics
        self._max_in_flight = max_in_flight
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        """Mirrored calls running: a drain waits for them (`close` cancels them)."""
        return len(self._tasks)

    def send(self, request: InferRequest, primary: InferResponse, shadow: Shadow,
             prepare: Prepare) -> None:
        """Start the mirrored call and return at once."""
        if len(self._tasks) >= self._max_in_flight:
            self._metrics.mirrored.labels(shadow.target.route, "skipped").inc()
            return
        task = asyncio.get_running_loop().create_task(self._call(request, primary, shadow,
                                                                     prepare))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _call(self, request: InferRequest, primary: InferResponse,
                    shadow: Shadow, prepare: Prepare) -> None:
        context, route = request.context, shadow.target.route
        copy = InferRequest(
            ref=shadow.target.ref, inputs=request.inputs, decoder=request.decoder,
            outputs=request.outputs, parameters=request.parameters, id=request.id,
            body=request.body, content_type=request.content_type,
            decode_off_loop=request.decode_off_loop,
            context=RequestContext(frontend="mirror", headers=context.headers,
                                   deadline=time.monotonic() + shadow.timeout_s,
                                   principal=context.principal,
                                   request_id=context.request_id))
        started = time.perf_counter()
        try:
            async with asyncio.timeout(shadow.timeout_s):
                await prepare(copy, shadow.target)
                reply = await shadow.target.adapter.infer(copy)
        except TimeoutError:
            self._metrics.mirrored.labels(route, "timeout").inc()
            return
        except Exception as exc:  # whatever the mirror does, the primary already answered
            log.info("route %s: mirror %s failed: %s", route, shadow.target.adapter.name, exc)
            self._metrics.mirrored.labels(route, "error").inc()
            return
        self._metrics.mirrored.labels(route, "ok").inc()
        self._metrics.mirror_latency.labels(route).observe(time.perf_counter() - started)
        comparison = compare_outputs(primary.outputs, reply.outputs, shadow.tolerance)
        self._metrics.mirror_difference.labels(route).observe(comparison.max_abs_difference)
        if comparison.disagreement is not None:
            self._metrics.mirror_disagreements.labels(route, comparison.disagreement).inc()
