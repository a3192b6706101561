"""Limits and policy sync on a real Sentinel setup (a master, 2 replicas, 3 sentinels, every
one behind a password): exact,
a master killed under load is replaced by a replica the limiter finds through the sentinels
while each rule's `on_redis_error` decides and no check waits past the timeout, exact again
afterwards, and policies still shared across the failover."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.metrics import GatewayMetrics
from gateway.ratelimit import RateLimiter
from gateway.ratelimit.config import RedisConfig
from gateway.ratelimit.factory import build_limiter
from gateway.ratelimit.rules import LimitRule
from tests.policy_support import AB_MODEL, add_ab_model
from tests.redis_cluster import (
    PASSWORD,
    SENTINEL_PASSWORD,
    SERVICE,
    LocalSentinel,
    exact_admissions,
    failover_under_load,
    policy_follows_failover,
    redis_sentinel,  # noqa: F401 (a fixture)
)
from tests.test_ratelimit_gcra import slow_rule
from tests.test_ratelimit_redis_down import answered
from tests.waiting import wait_until

MakeLimiter = Callable[..., RateLimiter]
BURST = 20


MASTER_URL = f"redis://:{PASSWORD}@/0"  # the master's credentials; the sentinels say where


def sentinel_section(sentinel: LocalSentinel) -> str:
    """As a deployment writes it, the sentinels' password in the environment."""
    addresses = ", ".join(f'"{address}"' for address in sentinel.addresses)
    return (f'[redis]\nmode = "sentinel"\nsentinels = [{addresses}]\n'
            f'service_name = "{SERVICE}"\nurl = "{MASTER_URL}"\n'
            'sentinel_password_env = "GATEWAY_TEST_SENTINEL_PASSWORD"\n')


@pytest.fixture
async def make_limiter(redis_sentinel: LocalSentinel) -> AsyncIterator[MakeLimiter]:  # noqa: F811
    """Limiters on the sentinel-managed master, leases off, a generous timeout unless set."""
    made: list[RateLimiter] = []

    def make(*rules: LimitRule, metrics: GatewayMetrics | None = None,
             **settings: Any) -> RateLimiter:
        settings = {"timeout_ms": 2000, "lease_max_share": 0.0, **settings}
        config = RedisConfig(MASTER_URL, mode="sentinel", service_name=SERVICE,
                             sentinels=tuple(("127.0.0.1", port)
                                             for port in redis_sentinel.sentinels),
                             sentinel_password=SENTINEL_PASSWORD, **settings)
        limiter = build_limiter(config, lambda: rules, metrics)
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        await limiter.close()


async def test_limits_are_exact_through_the_sentinels(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(slow_rule("exact", ("demo",), burst=BURST))
    assert await exact_admissions(limiter, "demo", "exact", BURST + 10) == BURST


async def test_a_master_killed_under_load_is_replaced_then_limits_are_exact_again(
        redis_sentinel: LocalSentinel, make_limiter: MakeLimiter) -> None:  # noqa: F811
    timeout_ms = 100
    metrics = GatewayMetrics()
    limiter = make_limiter(slow_rule("lenient", ("a",), burst=10**6, on_redis_error="open"),
                           slow_rule("strict", ("b",), burst=10**6, on_redis_error="closed"),
                           slow_rule("exact", ("c",), burst=BURST),
                           metrics=metrics, timeout_ms=timeout_ms, breaker_failures=3,
                           breaker_reset_s=0.2)
    master = redis_sentinel.master()
    try:
        await failover_under_load(limiter, metrics, lambda: redis_sentinel.kill(master),
                                  "a", "b", timeout_ms / 1000)
        assert redis_sentinel.master() != master  # a replica was promoted
        await wait_until(lambda: answered(limiter, "c"))
        assert await exact_admissions(limiter, "c", "after", BURST + 10) == BURST
    finally:
        redis_sentinel.heal()


@pytest.fixture
def replica(redis_sentinel: LocalSentinel, make_client: Callable[..., Any],  # noqa: F811
            repo: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[], Any]:
    """Starts one more gateway sharing policies through the sentinel-managed master."""
    add_ab_model(repo)
    monkeypatch.setenv("GATEWAY_TEST_SENTINEL_PASSWORD", SENTINEL_PASSWORD)

    async def start() -> TestClient:
        return await make_client(  # type: ignore[no-any-return]
            f"{AB_MODEL}\n{sentinel_section(redis_sentinel)}")

    return start


async def test_a_policy_change_reaches_every_replica_across_a_failover(
        redis_sentinel: LocalSentinel, replica: Callable[[], Any]) -> None:  # noqa: F811
    try:
        await policy_follows_failover(
            replica, lambda: redis_sentinel.kill(redis_sentinel.master()))
    finally:
        redis_sentinel.heal()
