"""Runs one Lua script for many concurrent callers over few round trips, within a time bound,
behind a circuit breaker.

Calls leave as one pipeline of EVALSHAs: one write, one read, one connection, however many
requests arrived together. As in the dynamic batcher, a pipeline leaves at once when none is
under way, and calls that arrive while one is under way leave together the moment it returns,
so under load each round trip carries many checks and the per-check cost falls. Each EVALSHA
stays atomic on its own; the pipeline is not a transaction and need not be. The time bound
runs from when the oldest call of a pipeline was submitted, so waiting for the pipeline ahead
counts too: no caller waits longer than `timeout_s` for its answer.

On Redis Cluster redis-py splits the pipeline by node (a call's keys share one slot), follows
MOVED and ASK one call at a time, and a node without the script (a promoted replica, say) gets
it by the EVAL fallback; `ClusterLayout` keeps what the client knows of the cluster current.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.util.types import AttributeValue
from redis.asyncio import RedisCluster
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.exceptions import NoScriptError

from gateway.breaker import CircuitBreaker
from gateway.ratelimit.cluster_layout import ClusterLayout
from gateway.ratelimit.connect import RedisClient

log = logging.getLogger(__name__)


class ScriptError(Exception):
    """The script did not run: Redis unreachable, too slow, failing, or its breaker open.
    `retry_after_s` is a fair time for a client to wait before trying again."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(slots=True)
class _Call:
    keys: Sequence[str]
    args: Sequence[int | str]
    future: asyncio.Future[Any]
    submitted: float  # loop time


def span_attributes(client: RedisClient, sha: str) -> dict[str, AttributeValue]:
    """The database index is the one the client connects with (the runner never SELECTs).
    The server is the one configured: a cluster's first node, a sentinel-managed master's name
    (calls go to whichever node or master holds the keys at the time)."""
    attributes: dict[str, AttributeValue] = {
        "db.system.name": "redis", "db.operation.name": "EVALSHA",
        "db.stored_procedure.name": sha}
    if isinstance(client, RedisCluster):
        node = next(iter(client.nodes_manager.startup_nodes.values()))
        attributes.update({"db.namespace": "0", "server.address": node.host,
                           "server.port": int(node.port)})
        return attributes
    target = client.connection_pool.connection_kwargs
    attributes["db.namespace"] = str(target.get("db", 0))
    if isinstance(client.connection_pool, SentinelConnectionPool):
        attributes["server.address"] = client.connection_pool.service_name
    elif "path" in target:  # a Unix socket
        attributes["server.address"] = str(target["path"])
    else:
        attributes["server.address"] = str(target.get("host", "localhost"))
        attributes["server.port"] = int(target.get("port", 6379))
    return attributes


class ScriptRunner:
    def __init__(self, client: RedisClient, script: str, sha: str, timeout_s: float,
                 breaker: CircuitBreaker) -> None:
        self._client = client
        self._script = script
        self._sha = sha
        #: A call's span attributes (semconv database, Redis): what runs, and where.
        self.span_attributes = span_attributes(client, sha)
        self._timeout_s = timeout_s
        self._breaker = breaker
        self._pending: list[_Call] = []
        self._in_flight: set[asyncio.Task[None]] = set()
        self._layout = ClusterLayout(client) if isinstance(client, RedisCluster) else None

    async def call(self, keys: Sequence[str], args: Sequence[int | str]) -> Any:
        """The script's reply; raises `ScriptError` if there is none."""
        return await self.submit(keys, args)

    def submit(self, keys: Sequence[str], args: Sequence[int | str]) -> asyncio.Future[Any]:
        """The same as a future, for callers that must act on the reply even if the caller
        that awaits it is cancelled (a lease's units are taken whether anyone waits or not).
        Callbacks added at once run before the callers queued after this one resume."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._breaker.allow():
            future.set_exception(
                ScriptError(f"circuit {self._breaker.name} is open", self._retry_after_s()))
            return future
        self._pending.append(_Call(keys, args, future, loop.time()))
        if len(self._pending) == 1 and not self._in_flight:
            loop.call_soon(self._flush)
        return future

    async def close(self) -> None:
        """Let the round trips under way finish (their callers are waiting), then disconnect."""
        await asyncio.gather(*self._in_flight, return_exceptions=True)
        if self._layout is not None:
            await self._layout.close()
        await self._client.aclose()

    def _flush(self) -> None:
        if not self._pending or self._in_flight:
            return
        batch, self._pending = self._pending, []
        task = asyncio.ensure_future(self._run(batch))
        self._in_flight.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._flush()  # whatever queued meanwhile leaves now, as one pipeline

    async def _run(self, batch: list[_Call]) -> None:
        first_read = self._layout is not None and not self._layout.known_once
        try:
            async with asyncio.timeout_at(batch[0].submitted + self._timeout_s):
                if self._layout is not None:
                    await self._layout.known()
                    first_read = False
                replies = await self._execute(batch)
        except Exception as exc:  # whatever went wrong, every caller must get an answer
            if not (first_read and isinstance(exc, TimeoutError)):
                # (a cluster's first layout read outlasting a call is not Redis failing)
                self._breaker.record_failure(exc)
            reason = (f"Redis did not answer within {self._timeout_s * 1000:.0f} ms"
                      if isinstance(exc, TimeoutError) else f"Redis failed: {exc!r}")
            log.warning("%s (%d calls)", reason, len(batch))
            for call in batch:
                self._fail(call, reason)
            if self._layout is not None:
                self._layout.forget()
            return
        self._breaker.record_success()
        for call, reply in zip(batch, replies, strict=True):
            if isinstance(reply, Exception):
                log.warning("the script failed: %s", reply)
                self._fail(call, f"the script failed: {reply}")
            elif not call.future.done():  # done: the caller gave up (cancelled)
                call.future.set_result(reply)

    def _fail(self, call: _Call, reason: str) -> None:
        if not call.future.done():
            call.future.set_exception(ScriptError(reason, self._retry_after_s()))

    async def _execute(self, batch: list[_Call]) -> list[Any]:
        replies = await self._pipeline(batch, by_sha=True)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            # Redis restarted or its script cache was flushed. EVAL runs and caches it again.
            again = await self._pipeline([batch[i] for i in missing], by_sha=False)
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    async def _pipeline(self, batch: list[_Call], *, by_sha: bool) -> list[Any]:
        # Raw commands: a cluster pipeline refuses the evalsha() method (it cannot tell a
        # call without keys where to go), yet routes EVALSHA by its keys like any command.
        command, body = ("EVALSHA", self._sha) if by_sha else ("EVAL", self._script)
        async with self._client.pipeline(transaction=False) as pipe:
            for call in batch:
                pipe.execute_command(command, body, len(call.keys), *call.keys, *call.args)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies

    def _retry_after_s(self) -> float:
        return self._breaker.retry_after_s() or 1.0
