"""Runs one Lua script for many concurrent callers over few round trips, within a time bound,
behind a circuit breaker.

Calls leave as one pipeline of EVALSHAs: one write, one read, one connection, however many
requests arrived together. As in the dynamic batcher, a pipeline leaves at once when none is
under way, and calls that arrive while one is under way leave together the moment it returns,
so under load each round trip carries many checks and the per-check cost falls. Each EVALSHA
stays atomic on its own; the pipeline is not a transaction and need not be.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.util.types import AttributeValue
from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from gateway.breaker import CircuitBreaker

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


def span_attributes(client: Redis, sha: str) -> dict[str, AttributeValue]:
    """The database index is the one the client connects with (the runner never SELECTs)."""
    target = client.connection_pool.connection_kwargs
    attributes: dict[str, AttributeValue] = {
        "db.system.name": "redis", "db.operation.name": "EVALSHA",
        "db.stored_procedure.name": sha, "db.namespace": str(target.get("db", 0))}
    if "path" in target:  # a Unix socket
        attributes["server.address"] = str(target["path"])
    else:
        attributes["server.address"] = str(target.get("host", "localhost"))
        attributes["server.port"] = int(target.get("port", 6379))
    return attributes


class ScriptRunner:
    def __init__(self, client: Redis, script: str, sha: str, timeout_s: float,
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
        self._pending.append(_Call(keys, args, future))
        if len(self._pending) == 1 and not self._in_flight:
            loop.call_soon(self._flush)
        return future

    async def close(self) -> None:
        """Let the round trips under way finish (their callers are waiting), then disconnect."""
        await asyncio.gather(*self._in_flight, return_exceptions=True)
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
        try:
            async with asyncio.timeout(self._timeout_s):
                replies = await self._execute(batch)
        except Exception as exc:  # whatever went wrong, every caller must get an answer
            self._breaker.record_failure(exc)
            reason = (f"Redis did not answer within {self._timeout_s * 1000:.0f} ms"
                      if isinstance(exc, TimeoutError) else f"Redis failed: {exc!r}")
            log.warning("%s (%d calls)", reason, len(batch))
            for call in batch:
                self._fail(call, reason)
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
        async with self._client.pipeline(transaction=False) as pipe:
            for call in batch:
                if by_sha:
                    pipe.evalsha(self._sha, len(call.keys), *call.keys, *call.args)
                else:
                    pipe.eval(self._script, len(call.keys), *call.keys, *call.args)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies

    def _retry_after_s(self) -> float:
        return self._breaker.retry_after_s() or 1.0
