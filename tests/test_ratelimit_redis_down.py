"""The limiter when Redis dies, hangs and comes back: each rule fails open or closed, checks
stay within the timeout, an open breaker keeps them off the network, and it recovers alone."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.breaker import BreakerState, CircuitBreaker
from gateway.errors import GatewayError, RateLimited, Unavailable
from gateway.metrics import GatewayMetrics
from gateway.ratelimit import RateLimiter
from gateway.ratelimit.gcra import SCRIPT, SHA
from gateway.ratelimit.gcra_limiter import GcraLimiter
from gateway.ratelimit.script_runner import ScriptRunner
from tests.redis_server import RedisServer, redis_process  # noqa: F401 (a fixture)
from tests.test_breaker import Clock
from tests.test_ratelimit_gcra import (  # noqa: F401 (make_limiter: a fixture)
    MakeLimiter,
    attempt,
    infer_request,
    make_limiter,
    slow_rule,
)
from tests.waiting import wait_until

FAIL_OPEN = slow_rule("lenient", ("a",), burst=1, on_redis_error="open")
FAIL_CLOSED = slow_rule("strict", ("b",), burst=1, on_redis_error="closed")
TIMEOUT_S = 0.05
SLACK_S = 0.05  # scheduling noise on a busy machine


def decisions(metrics: GatewayMetrics, rule: str, decision: str) -> float:
    value = metrics.registry.get_sample_value("gateway_ratelimit_decisions_total",
                                              {"rule": rule, "decision": decision})
    return value or 0.0


async def answered(limiter: RateLimiter, model: str, *errors: type[GatewayError]) -> bool:
    """Whether a check got Redis's answer (it sets `RateLimit`, allowed or not). Tests wait
    on this where a busy machine could make one check time out."""
    request = infer_request(model)
    error = await attempt(limiter, request)
    return "RateLimit" in request.context.reply_headers and (
        error is None if not errors else isinstance(error, errors))


async def test_killed_redis_fails_each_rule_its_way_then_recovers(
        make_limiter: MakeLimiter, redis_process: RedisServer) -> None:  # noqa: F811
    metrics = GatewayMetrics()
    limiter = make_limiter(FAIL_OPEN, FAIL_CLOSED, metrics=metrics, timeout_ms=50,
                           breaker_failures=2, breaker_reset_s=0.2)
    await wait_until(lambda: answered(limiter, "a"))  # connected, script loaded
    opened = decisions(metrics, "lenient", "failed_open")
    redis_process.kill()
    for _ in range(5):  # before and after the breaker opens
        started = time.monotonic()
        assert await attempt(limiter, infer_request("a")) is None
        error = await attempt(limiter, infer_request("b"))
        assert time.monotonic() - started < 2 * (TIMEOUT_S + SLACK_S)
        assert isinstance(error, Unavailable) and error.http_status == 503
        assert error.message == "rate limit 'strict' cannot be checked now and fails closed"
        assert error.reply_headers()["Retry-After"] == "1"
    assert decisions(metrics, "lenient", "failed_open") - opened == 5
    assert decisions(metrics, "strict", "failed_closed") == 5
    redis_process.restart()  # same port, empty: the gateway is not restarted
    await wait_until(lambda: answered(limiter, "b"), within=5)
    await wait_until(lambda: answered(limiter, "b", RateLimited))  # enforced again


async def test_hung_redis_costs_at_most_the_timeout_then_nothing(
        make_limiter: MakeLimiter, redis_process: RedisServer) -> None:  # noqa: F811
    """A frozen Redis accepts connections and never answers: the worst case for latency."""
    limiter = make_limiter(FAIL_OPEN, timeout_ms=50, breaker_failures=3, breaker_reset_s=1)
    await wait_until(lambda: answered(limiter, "a"))  # a success: no failures counted
    redis_process.freeze()
    for _ in range(3):
        started = time.monotonic()
        assert await attempt(limiter, infer_request("a")) is None
        assert TIMEOUT_S <= time.monotonic() - started < TIMEOUT_S + SLACK_S
    started = time.monotonic()
    for _ in range(20):  # the breaker is open (for 1 s): no waiting on the network
        assert await attempt(limiter, infer_request("a")) is None
    assert time.monotonic() - started < TIMEOUT_S


async def test_a_check_queued_behind_a_hung_round_trip_waits_no_longer_than_the_timeout(
        make_limiter: MakeLimiter, redis_process: RedisServer) -> None:  # noqa: F811
    """The bound runs from when a check asked, not from when its round trip left: one that
    queued behind a round trip to a hung Redis does not wait for that one and then its own."""
    timeout_s = 0.4
    limiter = make_limiter(FAIL_OPEN, timeout_ms=round(timeout_s * 1000), breaker_failures=5)
    await wait_until(lambda: answered(limiter, "a"))
    redis_process.freeze()
    ahead = asyncio.ensure_future(attempt(limiter, infer_request("a")))
    await asyncio.sleep(timeout_s / 2)  # the next check asks while that round trip hangs
    started = time.monotonic()
    assert await attempt(limiter, infer_request("a")) is None  # fails open
    assert time.monotonic() - started < timeout_s + SLACK_S  # not 1.5 x the timeout
    assert await ahead is None


@pytest.fixture
async def client(redis_process: RedisServer) -> AsyncIterator[Redis]:  # noqa: F811
    """As the factory builds it, with a generous timeout: the next test is not about time."""
    client = Redis.from_url(redis_process.url, socket_timeout=1, socket_connect_timeout=1,
                            retry=Retry(NoBackoff(), 0))
    yield client
    await client.aclose()


async def test_an_open_breaker_keeps_checks_off_the_network_until_the_probe(
        client: Redis, redis_process: RedisServer) -> None:  # noqa: F811
    clock = Clock()
    breaker = CircuitBreaker("redis", failures=2, reset_s=5, clock=clock)
    metrics = GatewayMetrics()
    limiter = GcraLimiter(ScriptRunner(client, SCRIPT, SHA, 1.0, breaker),
                          lambda: (FAIL_OPEN,), metrics)
    redis_process.kill()
    for _ in range(2):
        assert await attempt(limiter, infer_request("a")) is None
    assert breaker.state is BreakerState.OPEN
    redis_process.restart()
    for _ in range(10):
        assert await attempt(limiter, infer_request("a")) is None
    assert decisions(metrics, "lenient", "failed_open") == 12
    inspector = Redis.from_url(redis_process.url)
    try:
        assert "cmdstat_evalsha" not in await inspector.info("commandstats")
        clock.now += 5  # the probe is due
        request = infer_request("a")
        assert await attempt(limiter, request) is None
        assert request.context.reply_headers["RateLimit"].startswith('"lenient";r=0;')
        assert breaker.state is BreakerState.CLOSED
        assert await inspector.dbsize() == 1
    finally:
        await inspector.aclose()
