"""The Redis client for `[redis]`, whatever the deployment behind it. Routing and failover are
redis-py's: a Cluster client follows the slot map (MOVED and ASK redirections, a new map after a
failover), and a Sentinel-managed client asks the sentinels where the master is whenever it
opens a connection, so it finds a promoted replica by itself."""

from __future__ import annotations

from typing import Any, cast

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

from gateway.ratelimit.config import RedisConfig

RedisClient = Redis | RedisCluster


def connect(config: RedisConfig, timeout_s: float, *, retry: Retry | None = None,
            decode_responses: bool = False) -> RedisClient:
    """A client whose every socket operation is bounded by `timeout_s`; `retry` None keeps
    redis-py's default retries (fine for idempotent calls only)."""
    options: dict[str, Any] = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s,
                               "decode_responses": decode_responses}
    if retry is not None:
        options["retry"] = retry
    options.update(config.tls.options())  # rediss://: its CA and client certificate
    if config.mode == "cluster":
        return RedisCluster.from_url(
            config.url, startup_nodes=[ClusterNode(host, port) for host, port in config.nodes],
            **options)
    if config.mode == "sentinel":
        return _sentinel_master(config, options)
    return Redis.from_url(config.url, **options)


class _SentinelMaster(Redis):
    """The master's client; closing it also closes the sentinel clients it asks (redis-py
    leaves those to whoever made the `Sentinel`)."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        pool = cast(SentinelConnectionPool, self.connection_pool)
        await pool.sentinel_manager.aclose()


def _sentinel_master(config: RedisConfig, options: dict[str, Any]) -> Redis:
    # The URL, if any, holds only the master's credentials and database (checked in config).
    credentials: dict[str, Any] = dict(parse_url(config.url)) if config.url else {}
    if credentials.pop("connection_class", None) is not None:  # rediss://
        credentials["ssl"] = True
    sentinel_options = {key: value for key, value in options.items() if key != "decode_responses"}
    if config.sentinel_password:
        sentinel_options["password"] = config.sentinel_password
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(config.sentinels), sentinel_kwargs=sentinel_options)
    return cast(Redis, sentinel.master_for(config.service_name, redis_class=_SentinelMaster,
                                           **credentials, **options))
