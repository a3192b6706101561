"""What `gateway serve` does on SIGTERM or SIGINT once both doors listen: a drain that loses
no request a client sent on a connection the gateway accepted. Each phase is logged:

1. readiness goes red on every door at once (`/readyz`, v2 ready, gRPC `ServerReady` and
   health `NOT_SERVING`) while both listeners keep accepting for `drain_delay_s`, so that a
   load balancer (Kubernetes endpoints) stops sending new connections first;
2. the listeners stop accepting (the HTTP listener's backlog is still served; gRPC clients get
   GOAWAY); every HTTP reply from now on says `Connection: close`, and connections idle for
   `IDLE_GRACE_S` are closed;
3. requests in flight, the batches they queued and mirrored calls get `shutdown_timeout_s`;
4. whatever is still in flight then answers 503 (`UNAVAILABLE`), and the adapters close.

A second SIGTERM or SIGINT hurries: the gateway stops accepting at once and answers whatever is
still in flight with 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable

from aiohttp import web

from gateway.app import Gateway
from gateway.grpc.server import GrpcServer
from gateway.rest.connections import GuardedSite, close_idle_connections

log = logging.getLogger("gateway")

#: A connection that sent no byte of a request this long into phase 2 is closed. A client
#: that had already sent one when the gateway closed the connection would lose it (HTTP/1.1
#: has no way to say "closing" to an idle connection); waiting this long first makes that
#: a client that stayed idle a full second, then sent at the very instant of the close.
IDLE_GRACE_S = 1.0
#: gRPC's own cut (`server.stop(grace)`) comes this long after ours, which answers with a
#: message and records the call.
GRPC_GRACE_MARGIN_S = 1.0
#: Once every request is answered, how long open gRPC streams (health `Watch`, reflection) and
#: calls not yet past authentication may still run before they are cancelled.
GRPC_SETTLE_S = 0.5
#: How long the 503s of cut requests get to go out before the connections are closed.
FLUSH_S = 2.0
_POLL_S = 0.01


class ShutdownSignals:
    """SIGTERM and SIGINT: the first asks for the drain, a later one hurries it."""

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self.hurried = asyncio.Event()
        self.first = ""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._received, signum)

    def _received(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if not self.requested.is_set():
            self.first = name
            self.requested.set()
        elif not self.hurried.is_set():
            log.warning("%s during the drain: stopping at once; requests still in flight get "
                        "503", name)
            self.hurried.set()


async def drain_and_stop(gateway: Gateway, runner: web.AppRunner, site: GuardedSite,
                         grpc_server: GrpcServer, signals: ShutdownSignals) -> None:
    """Run the phases above, then close the HTTP runner (and with it the adapters)."""
    config = gateway.config.server
    drain = gateway.drain
    server = runner.server
    assert server is not None, "the runner is set up"
    loop = asyncio.get_running_loop()
    began = loop.time()

    drain.draining = True
    await grpc_server.not_serving()
    log.info("shutting down (%s): readiness is red on every door; accepting connections for "
             "%.3g s more ([server] drain_delay_s)", signals.first, config.drain_delay_s)
    await _until(signals.hurried, config.drain_delay_s)

    await site.stop()
    drain.closing = True
    grpc_stopped = loop.create_task(
        grpc_server.stop(config.shutdown_timeout_s + GRPC_GRACE_MARGIN_S))
    stopped_accepting = loop.time()
    log.info("draining: stopped accepting connections; %d requests in flight on %d HTTP "
             "connections (each closes after its reply) and gRPC; waiting up to %.3g s for them "
             "([server] shutdown_timeout_s)", drain.in_flight, len(server.connections),
             config.shutdown_timeout_s)

    def settled() -> bool:
        return not server.connections and not drain.in_flight and not gateway.mirror.in_flight

    close_idle_at = stopped_accepting + min(IDLE_GRACE_S, config.shutdown_timeout_s)
    idle_closed = 0
    mirrors_told = False

    def look() -> None:
        nonlocal idle_closed, mirrors_told
        if loop.time() >= close_idle_at:
            idle_closed += close_idle_connections(server)
        if not (mirrors_told or server.connections or drain.in_flight):
            log.info("draining: every request answered; waiting for %d mirrored calls",
                     gateway.mirror.in_flight)
            mirrors_told = True

    if await _poll(settled, stopped_accepting + config.shutdown_timeout_s, signals.hurried,
                   look):
        log.info("drained in %.2f s: every request answered (%d idle HTTP connections closed)",
                 loop.time() - stopped_accepting, idle_closed)
    else:
        why = ("second signal" if signals.hurried.is_set()
               else f"shutdown_timeout_s ({config.shutdown_timeout_s:.3g} s) passed")
        cut = drain.expire()
        log.warning("%s: %d requests still in flight answer 503, %d mirrored calls are "
                    "cancelled", why, cut, gateway.mirror.in_flight)
        await _poll(lambda: not drain.in_flight, loop.time() + FLUSH_S, asyncio.Event())

    try:
        await asyncio.wait_for(asyncio.shield(grpc_stopped), GRPC_SETTLE_S)
    except TimeoutError:
        await grpc_server.stop(0)  # cancels what is left; returns once its handlers ended
        await grpc_stopped
    await runner.cleanup()  # closes what is left, then the adapters (Gateway.close)
    log.info("stopped %.2f s after %s", loop.time() - began, signals.first)


async def _until(event: asyncio.Event, timeout_s: float) -> None:
    """Wait `timeout_s`, or less if `event` is set."""
    if timeout_s > 0 and not event.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout_s)


async def _poll(done: Callable[[], bool], deadline: float, stop: asyncio.Event,
                tick: Callable[[], None] = lambda: None) -> bool:
    """Whether `done()` came to hold before `deadline` (loop time) or `stop`; `tick` runs at
    each look. (What `done` reads changes in many places; looking every 10 ms costs nothing.)"""
    loop = asyncio.get_running_loop()
    while not done():
        if loop.time() >= deadline or stop.is_set():
            return False
        tick()
        await _until(stop, _POLL_S)
    return True
