"""What a Redis Cluster client knows of the cluster (its nodes, who serves which slots), read
outside any one call's time bound.

redis-py's first read takes longer than a check may wait (it also fetches COMMAND: 100-200 ms
of parsing). Inline, in a call, a tight `timeout_ms` would cancel it every time and the client
would never know the cluster. Here it runs in a task of its own; a call waits for it only as
long as its own bound allows, and leaves it running for the next.

The slots are read again (CLUSTER SLOTS only, a few ms) after any failed round trip: a master
that died, or hangs, tells no client of its replica's promotion, so only asking the cluster
anew finds the new master.
"""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio import RedisCluster

log = logging.getLogger(__name__)


class ClusterLayout:
    def __init__(self, client: RedisCluster) -> None:
        self._client = client
        self._reading: asyncio.Task[object] | None = None
        self.known_once = False  # a read has succeeded: the client has a layout, if stale

    async def known(self) -> None:
        """Return once the client knows the layout (raises if reading it failed)."""
        if self._reading is None or _failed(self._reading):
            self._start()
        assert self._reading is not None
        await asyncio.shield(self._reading)

    def forget(self) -> None:
        """Read it anew, unless a read is under way."""
        if self._reading is None or self._reading.done():
            self._start()

    async def close(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
            await asyncio.gather(self._reading, return_exceptions=True)

    def _start(self) -> None:
        self._reading = asyncio.get_running_loop().create_task(self._read())
        self._reading.add_done_callback(self._done)

    async def _read(self) -> None:
        if self.known_once:
            await self._client.nodes_manager.initialize()  # the slots again
        # Everything, the first time or if redis-py dropped what it knew (it does on
        # CLUSTERDOWN); else nothing.
        await self._client.initialize()

    def _done(self, task: asyncio.Task[object]) -> None:
        if task.cancelled():
            return
        if task.exception() is not None:
            log.warning("reading the Redis Cluster's layout failed: %r", task.exception())
        else:
            self.known_once = True


def _failed(task: asyncio.Task[object]) -> bool:
    return task.done() and (task.cancelled() or task.exception() is not None)
