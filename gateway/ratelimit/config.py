"""`[redis]` in gateway.toml: where limits and policies are shared across replicas, and how
hard the gateway leans on it when it misbehaves."""

from __future__ import annotations

import os
from dataclasses import dataclass

from gateway.tomlconfig import Table


@dataclass(frozen=True)
class RedisConfig:
    url: str
    timeout_ms: int = 50  # bounds every Redis call: a slow Redis must not slow every request
    breaker_failures: int = 3  # consecutive failed calls that open the breaker
    breaker_reset_s: float = 5.0  # how long it stays open before one probe call
    # Leases (gateway/ratelimit/leases.py): a process takes at most this share of a rule's
    # burst at once, so replicas x share x burst bounds how far a window can overshoot; 0: off,
    # every request is checked in Redis.
    lease_max_share: float = 0.05
    lease_ttl_ms: int = 1000  # unspent leased units go back to Redis after this long


def parse_redis_config(t: Table) -> RedisConfig | None:
    """`url`, or `url_env` naming the environment variable that holds it (keeps passwords out
    of the file). Neither: no Redis, so no shared limits."""
    t.expect(("url", "url_env", "timeout_ms", "breaker_failures", "breaker_reset_s",
              "lease_max_share", "lease_ttl_ms"))
    d = RedisConfig("")
    url = t.text("url", "")
    url_env = t.text("url_env", "")
    if url and url_env:
        raise t.error("url_env", "set either url or url_env, not both")
    if url_env:
        url = os.environ.get(url_env, "")
        if not url:
            raise t.error("url_env", f"environment variable {url_env} is not set or empty")
    config = RedisConfig(
        url=url,
        timeout_ms=t.integer("timeout_ms", d.timeout_ms, minimum=1),
        breaker_failures=t.integer("breaker_failures", d.breaker_failures, minimum=1),
        breaker_reset_s=t.number("breaker_reset_s", d.breaker_reset_s, minimum=0.001),
        lease_max_share=t.number("lease_max_share", d.lease_max_share, minimum=0),
        lease_ttl_ms=t.integer("lease_ttl_ms", d.lease_ttl_ms, minimum=10, maximum=60_000),
    )
    if config.lease_max_share > 1:
        raise t.error("lease_max_share", "expected a share of the burst from 0 to 1, got "
                      f"{config.lease_max_share:g}")
    t.finish()
    if not url and t.data:
        raise t.error(None, "set url or url_env (the other keys need a Redis to apply to)")
    if url and not url.startswith(("redis://", "rediss://", "unix://")):
        raise t.error("url_env" if url_env else "url",
                      "expected a redis://, rediss:// or unix:// URL")
    return config if url else None
