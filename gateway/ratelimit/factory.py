"""Builds the rate-limit step from `[redis]`, `[limits]` and the active policy's limit rules."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.breaker import CircuitBreaker
from gateway.metrics import GatewayMetrics
from gateway.ratelimit import RateLimiter, gcra
from gateway.ratelimit.config import RedisConfig
from gateway.ratelimit.connect import connect
from gateway.ratelimit.gcra_limiter import GcraLimiter
from gateway.ratelimit.leases import LeaseBook
from gateway.ratelimit.limits_config import LimitsConfig
from gateway.ratelimit.memory import MemoryBuckets
from gateway.ratelimit.rules import LimitRule
from gateway.ratelimit.script_runner import ScriptRunner


def build_limiter(config: RedisConfig | None, rules: Callable[[], Sequence[LimitRule]],
                  metrics: GatewayMetrics | None = None,
                  limits: LimitsConfig | None = None) -> RateLimiter:
    """`rules` returns the active policy's limits at call time, so reloads apply at once.
    Decisions are counted in `metrics` (pass the gateway's, or they go to a private registry).
    With no Redis (or `[limits] store = "memory"`) the limits are counted in this process."""
    limits = limits or LimitsConfig()
    if config is None or limits.in_memory(config):
        return GcraLimiter(MemoryBuckets(limits.memory_max_keys), rules,
                           metrics or GatewayMetrics())
    timeout_s = config.timeout_ms / 1000
    # No client-side retries: the script is not idempotent (a retry after a lost reply would
    # charge twice), and the breaker, not a retry loop, decides when to try Redis again.
    client = connect(config, timeout_s, retry=Retry(NoBackoff(), 0))
    breaker = CircuitBreaker("redis", config.breaker_failures, config.breaker_reset_s)
    runner = ScriptRunner(client, gcra.SCRIPT, gcra.SHA, timeout_s, breaker)
    metrics = metrics or GatewayMetrics()
    metrics.watch_breaker(breaker)
    leases = (LeaseBook(runner, config.lease_max_share, config.lease_ttl_ms / 1000,
                        metrics.ratelimit_lease_units)
              if config.lease_max_share > 0 else None)
    return GcraLimiter(runner, rules, metrics, leases)
