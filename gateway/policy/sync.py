"""Replicas share one policy through Redis: each applied version is numbered by one counter,
stored with its sources, and announced on a pub/sub channel, so every replica switches within
moments and a replica that starts later loads the active one.

Keys (the `{prefix}` hash tag keeps them in one Redis Cluster slot):
    {prefix}:counter   the last version number handed out (INCR)
    {prefix}:active    hash: version, hash (of the sources) of the active version
    {prefix}:versions  hash: version -> JSON record (origin, parent, sources, ...), the last N
    prefix             the channel; a message is a new version's number

Publishing is one script, so it is atomic: a policy whose content is already active is not
numbered again. Two replicas that watch the same files and see the same edit therefore agree
on one version instead of each announcing its own and flapping between them.

On Redis Cluster the script runs on the node of the `{prefix}` slot, and its PUBLISH reaches
subscribers on every node (classic pub/sub is broadcast over the cluster bus). With Sentinel
every new connection asks where the master is. Either way a lost subscription is taken again
and `on_connect` catches up on what was announced meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

from redis.asyncio import RedisCluster
from redis.exceptions import RedisError

from gateway.errors import Unavailable
from gateway.policy.store import (
    OnVersion,
    OnVersions,
    PolicyVersion,
    version_from_record,
    version_record,
)
from gateway.ratelimit.config import RedisConfig
from gateway.ratelimit.connect import connect

log = logging.getLogger(__name__)
RECONNECT_S = 1.0
TIMEOUT_S = 2.0

# KEYS: counter, active, versions. ARGV: hash, record, keep, floor, channel.
# Returns {version, 1 if this call created it}.
PUBLISH = """
if redis.call('HGET', KEYS[2], 'hash') == ARGV[1] then
  return {tonumber(redis.call('HGET', KEYS[2], 'version')), 0}
end
-- an emptied Redis must not hand out numbers replicas already run
if tonumber(redis.call('GET', KEYS[1]) or '0') < tonumber(ARGV[4]) then
  redis.call('SET', KEYS[1], ARGV[4])
end
local version = redis.call('INCR', KEYS[1])
redis.call('HSET', KEYS[3], version, ARGV[2])
local kept = redis.call('HKEYS', KEYS[3])
table.sort(kept, function(a, b) return tonumber(a) < tonumber(b) end)
for i = 1, #kept - tonumber(ARGV[3]) do
  redis.call('HDEL', KEYS[3], kept[i])
end
redis.call('HSET', KEYS[2], 'version', version, 'hash', ARGV[1])
redis.call('PUBLISH', ARGV[5], version)
return {version, 1}
"""


class RedisPolicySync:
    origin = "redis"

    def __init__(self, config: RedisConfig, prefix: str, keep: int) -> None:
        # redis-py's default retries: publishing the same content twice numbers it once
        self._client = connect(config, TIMEOUT_S, decode_responses=True)
        self._keys = [f"{{{prefix}}}:counter", f"{{{prefix}}}:active", f"{{{prefix}}}:versions"]
        self._channel = prefix
        self._keep = keep
        self._publish = self._client.register_script(PUBLISH)
        self._listener: asyncio.Task[None] | None = None

    async def publish(self, draft: PolicyVersion, floor: int) -> PolicyVersion:
        """Number `draft` and announce it; or, if its content is already active, that
        version. `floor`: the highest number this replica has seen."""
        try:
            number, created = await self._publish(
                keys=self._keys, args=[draft.hash, version_record(draft), self._keep, floor,
                                       self._channel])
            if not created:  # the same content is active already, as `number`
                return await self._fetch(number) or replace(draft, number=number)
            return replace(draft, number=number)
        except RedisError as exc:
            raise Unavailable(f"Redis did not take the policy: {exc}", retry_after_s=1) from None

    async def versions(self) -> list[PolicyVersion]:
        """Every version Redis keeps, oldest first."""
        try:
            records = await self._client.hgetall(self._keys[2])
        except RedisError as exc:
            raise Unavailable(f"Redis did not answer: {exc}") from None
        versions = (version_from_record(int(n), record) for n, record in records.items())
        return sorted((v for v in versions if v is not None), key=lambda v: v.number)

    def listen(self, on_connect: OnVersions, on_version: OnVersion) -> None:
        """Follow announcements until `close`; after every (re)connect `on_connect` gets what
        Redis holds, so nothing announced while disconnected is missed."""
        self._listener = asyncio.get_running_loop().create_task(
            self._listen(on_connect, on_version))

    async def close(self) -> None:
        if self._listener is not None:
            # redis-py's pub/sub can absorb a cancellation while it reconnects to a Redis
            # that is gone: cancel until the task ends (the caller bounds the wait)
            while not self._listener.done():
                self._listener.cancel()
                await asyncio.wait({self._listener}, timeout=0.1)
        await self._client.aclose()

    async def _listen(self, on_connect: OnVersions, on_version: OnVersion) -> None:
        lost = False
        while True:
            try:
                if lost and isinstance(self._client, RedisCluster):
                    # The subscription's node may have died, and a cluster client picks the
                    # node for a new one from the slots it knows: ask which serve them now.
                    await self._client.nodes_manager.initialize()
                async with self._client.pubsub() as pubsub:
                    await pubsub.subscribe(self._channel)
                    await on_connect(await self.versions())
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            version = await self._fetch(int(message["data"]))
                            if version is not None:
                                await on_version(version)
            except (RedisError, Unavailable) as exc:
                log.warning("policies: lost Redis (%s); reconnecting in %.0f s", exc,
                            RECONNECT_S)
            except Exception:
                log.exception("policies: following Redis failed; reconnecting in %.0f s",
                              RECONNECT_S)
            lost = True
            await asyncio.sleep(RECONNECT_S)

    async def _fetch(self, number: int) -> PolicyVersion | None:
        record = await self._client.hget(self._keys[2], str(number))
        return None if record is None else version_from_record(number, record)
