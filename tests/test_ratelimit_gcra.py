"""The GCRA limiter against a real redis-server: exactness, headers, refill, cost, keys, scripts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from gateway.errors import GatewayError, RateLimited
from gateway.metrics import GatewayMetrics
from gateway.ratelimit import RateLimiter
from gateway.ratelimit.config import RedisConfig
from gateway.ratelimit.factory import build_limiter
from gateway.ratelimit.gcra import SHA
from gateway.ratelimit.rules import LimitRule
from gateway.types import InferRequest, ModelRef, Principal, RequestContext
from tests.ratelimit_headers import remaining, service_limit
from tests.redis_server import RedisServer, redis_process  # noqa: F401 (a fixture)
from tests.waiting import wait_until

MakeLimiter = Callable[..., RateLimiter]


def slow_rule(name: str, models: tuple[str, ...], **fields: Any) -> LimitRule:
    """A rule that does not refill within a test: its burst is all there is."""
    return LimitRule(name, models, rate=1, period_s=3600, **fields)


def infer_request(model: str = "demo", subject: str = "alice", **claims: str) -> InferRequest:
    return InferRequest(ModelRef(model), RequestContext(
        "test", {}, time.monotonic() + 60, principal=Principal(subject, claims)))


async def attempt(limiter: RateLimiter, request: InferRequest,
                  rows: int = 1) -> GatewayError | None:
    """The error the check raised, or None when it allowed the request."""
    try:
        await limiter.check(request, rows)
    except GatewayError as error:
        return error
    return None


@pytest.fixture
async def make_limiter(
        redis_process: RedisServer) -> AsyncIterator[MakeLimiter]:  # noqa: F811
    """Limiters over the test's Redis: `make(*rules, metrics=None, **[redis] settings)`. The
    timeout defaults to a generous 2 s: exactness tests must not fail open on a busy machine.
    Leases are off unless asked for: these tests are about each check's exact answer
    (tests/test_ratelimit_leases.py is about leases)."""
    made: list[RateLimiter] = []

    def make(*rules: LimitRule, metrics: GatewayMetrics | None = None,
             **settings: Any) -> RateLimiter:
        settings.setdefault("timeout_ms", 2000)
        settings.setdefault("lease_max_share", 0.0)
        limiter = build_limiter(RedisConfig(redis_process.url, **settings), lambda: rules, metrics)
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        await limiter.close()


@pytest.fixture
async def redis(redis_process: RedisServer) -> AsyncIterator[Redis]:  # noqa: F811
    """A plain client for looking at what the limiter left in Redis."""
    client = Redis.from_url(redis_process.url, decode_responses=True)
    yield client
    await client.aclose()


async def test_exactly_the_burst_passes_under_concurrency(make_limiter: MakeLimiter,
                                                          redis: Redis) -> None:
    limiter = make_limiter(slow_rule("shared", ("*",), burst=50))
    connections = (await redis.info("stats"))["total_connections_received"]
    requests = [infer_request() for _ in range(200)]
    errors = await asyncio.gather(*(attempt(limiter, r) for r in requests))
    allowed = [r for r, e in zip(requests, errors, strict=True) if e is None]
    assert len(allowed) == 50
    assert all(isinstance(e, RateLimited) for e in errors if e is not None)
    # Each check saw the bucket exactly as the previous one left it.
    assert sorted(remaining(r.context.reply_headers) for r in allowed) == list(
        range(50))
    # The 200 checks of one tick went out as one pipeline on one connection.
    assert (await redis.info("stats"))["total_connections_received"] - connections == 1
    assert (await redis.info("commandstats"))["cmdstat_evalsha"]["calls"] == 200


async def test_headers_count_down_and_retry_after_follows_the_rule(
        make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(LimitRule("r", ("demo",), rate=1, period_s=10, burst=2))
    started = time.monotonic()
    first, second, third = infer_request(), infer_request(), infer_request()
    assert await attempt(limiter, first) is None
    assert first.context.reply_headers == {  # a burst of 2 takes 20 s to come back
        "RateLimit-Policy": '"r";q=2;w=20', "RateLimit": '"r";r=1;t=10'}
    assert await attempt(limiter, second) is None
    assert remaining(second.context.reply_headers) == 0
    error = await attempt(limiter, third)
    elapsed = time.monotonic() - started
    assert isinstance(error, RateLimited) and error.retry_after_s is not None
    # The next unit frees up one emission interval (10 s) after the first request.
    assert 10 - elapsed - 1e-5 <= error.retry_after_s <= 10
    # Refused: `t` is the wait for this request, as Retry-After says.
    assert error.reply_headers() == {"RateLimit-Policy": '"r";q=2;w=20',
                                     "RateLimit": '"r";r=0;t=10', "Retry-After": "10"}
    assert third.context.reply_headers == error.headers
    assert "'r'" in error.message


async def test_refill_is_smooth_at_the_configured_rate(make_limiter: MakeLimiter) -> None:
    """After the burst, a client that waits exactly the advertised time is always let in, and
    over a measured time it gets burst + rate * time."""
    rate, burst = 50, 10
    limiter = make_limiter(LimitRule("r", ("*",), rate=rate, period_s=1, burst=burst))
    allowed = refused_after_waiting = 0
    waited = False
    first_sent = time.monotonic()
    first_answered = 0.0
    while True:
        sent = time.monotonic()
        error = await attempt(limiter, infer_request())
        answered = time.monotonic()
        first_answered = first_answered or answered
        if error is None:
            allowed += 1
            waited = False
        else:
            assert isinstance(error, RateLimited) and error.retry_after_s is not None
            assert error.retry_after_s <= 1 / rate
            refused_after_waiting += waited
            waited = True
        if answered - first_sent >= 1.0:  # end on a check, not on a sleep
            break
        if error is not None and error.retry_after_s is not None:
            await asyncio.sleep(error.retry_after_s)  # measured waiting is the point
    assert refused_after_waiting == 0
    # Redis saw the first and last checks at some moments within these local brackets.
    shortest, longest = sent - first_answered, answered - first_sent
    assert burst + rate * shortest - 1 <= allowed <= burst + rate * longest + 1


async def test_cost_by_rows(make_limiter: MakeLimiter, redis: Redis) -> None:
    rows_rule = LimitRule("rows", ("demo",), burst=100, cost="rows", rate=100, period_s=3600)
    limiter = make_limiter(rows_rule)
    request = infer_request()
    assert await attempt(limiter, request, rows=64) is None
    assert remaining(request.context.reply_headers) == 36
    error = await attempt(limiter, infer_request(), rows=64)
    assert isinstance(error, RateLimited) and error.retry_after_s is not None
    assert error.retry_after_s == pytest.approx(28 * 36, abs=1)  # 28 rows short, 36 s per row
    assert await attempt(limiter, infer_request(), rows=36) is None
    assert isinstance(await attempt(limiter, infer_request(), rows=1), RateLimited)
    # More rows than the burst can never pass: refused at once, without asking Redis.
    error = await attempt(limiter, infer_request(subject="bob"), rows=101)
    assert isinstance(error, RateLimited) and error.retry_after_s is None
    assert "costs 101 rows, more than limit 'rows' allows at once (100)" in error.message
    assert await redis.keys("*bob*") == []


async def test_every_rule_must_allow_and_only_then_charges(make_limiter: MakeLimiter,
                                                           redis: Redis) -> None:
    per_user = slow_rule("user", ("*",), burst=3)
    per_tenant = slow_rule("tenant", ("*",), key="tenant", burst=5)
    limiter = make_limiter(per_user, per_tenant)
    first = infer_request(subject="alice", tenant="acme")
    assert await attempt(limiter, first) is None
    # The headers describe the rule closest to refusing.
    assert service_limit(first.context.reply_headers)[:2] == ("user", 2)
    assert first.context.reply_headers["RateLimit-Policy"] == (
        '"user";q=3;w=10800, "tenant";q=5;w=18000')
    for _ in range(2):
        assert await attempt(limiter, infer_request(subject="alice", tenant="acme")) is None
    error = await attempt(limiter, infer_request(subject="alice", tenant="acme"))
    assert isinstance(error, RateLimited) and "'user'" in error.message
    # alice's refused request did not charge the tenant: bob gets exactly the 2 left.
    for _ in range(2):
        assert await attempt(limiter, infer_request(subject="bob", tenant="acme")) is None
    error = await attempt(limiter, infer_request(subject="bob", tenant="acme"))
    assert isinstance(error, RateLimited) and "'tenant'" in error.message
    assert service_limit(error.headers)[0] == "tenant"
    assert await attempt(limiter, infer_request(subject="carol", tenant="other")) is None
    keys = set(await redis.keys("*"))
    assert keys == {"rl:{demo}:user:sub=alice", "rl:{demo}:user:sub=bob",
                    "rl:{demo}:user:sub=carol", "rl:{demo}:tenant:tenant=acme",
                    "rl:{demo}:tenant:tenant=other"}
    assert len({key_slot(str(key).encode()) for key in keys}) == 1


async def test_rules_apply_to_their_models_and_count_per_model(
        make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(slow_rule("only-a", ("a",), burst=1),
                           slow_rule("each", ("*",), burst=2))
    assert await attempt(limiter, infer_request("a")) is None
    assert isinstance(await attempt(limiter, infer_request("a")), RateLimited)
    for _ in range(2):  # "each" counts model b apart from model a
        assert await attempt(limiter, infer_request("b")) is None
    assert isinstance(await attempt(limiter, infer_request("b")), RateLimited)
    unlimited = make_limiter(slow_rule("only-a", ("a",), burst=1))
    request = infer_request("b")
    assert await attempt(unlimited, request) is None
    assert request.context.reply_headers == {}


async def test_keys_expire_when_their_bucket_is_full_again(make_limiter: MakeLimiter,
                                                           redis: Redis) -> None:
    slow = make_limiter(LimitRule("slow", ("*",), rate=1, period_s=10, burst=3))
    assert await attempt(slow, infer_request()) is None
    assert 9_000 < await redis.pttl("rl:{demo}:slow:sub=alice") <= 10_000
    fast = make_limiter(LimitRule("fast", ("*",), rate=100, period_s=1, burst=5))
    for _ in range(3):
        assert await attempt(fast, infer_request()) is None
    ttl = await redis.pttl("rl:{demo}:fast:sub=alice")
    assert ttl == -2 or 0 < ttl <= 30  # -2: already gone, on a slow machine
    await wait_until(lambda: _absent(redis, "rl:{demo}:fast:sub=alice"), within=2)


async def _absent(redis: Redis, key: str) -> bool:
    return not await redis.exists(key)


async def test_the_script_is_reloaded_after_script_flush(make_limiter: MakeLimiter,
                                                         redis: Redis) -> None:
    limiter = make_limiter(slow_rule("r", ("*",), burst=5))
    left = []
    for flush in (False, True, False):
        if flush:
            await redis.script_flush()
            assert await redis.script_exists(SHA) == [False]
        request = infer_request()
        assert await attempt(limiter, request) is None
        left.append(remaining(request.context.reply_headers))
    assert left == [4, 3, 2]  # the buckets survived; only the script was lost
    assert await redis.script_exists(SHA) == [True]
    stats = await redis.info("commandstats")
    assert stats["cmdstat_eval"]["calls"] == 2  # once at first use, once after the flush
    assert stats["cmdstat_evalsha"]["calls"] == 3


async def test_decisions_are_counted_per_rule(make_limiter: MakeLimiter) -> None:
    metrics = GatewayMetrics()
    limiter = make_limiter(slow_rule("r", ("*",), burst=2), metrics=metrics)
    for _ in range(3):
        await attempt(limiter, infer_request())

    def count(decision: str) -> float | None:
        return metrics.registry.get_sample_value("gateway_ratelimit_decisions_total",
                                                 {"rule": "r", "decision": decision})

    assert (count("allowed"), count("limited")) == (2, 1)
