"""Limits and policy sync on a real Redis Cluster (3 masters + 3 replicas): exact on every
shard, the script loaded on whichever node needs it, a slot moved between masters followed
through ASK and MOVED with no count lost, a master killed under load failed over while each
rule's `on_redis_error` decides and no check waits past the timeout, and policies still shared
afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from redis.crc import key_slot

from gateway.metrics import GatewayMetrics
from gateway.ratelimit import RateLimiter
from gateway.ratelimit.config import RedisConfig
from gateway.ratelimit.factory import build_limiter
from gateway.ratelimit.gcra import SHA
from gateway.ratelimit.rules import LimitRule
from tests.policy_support import AB_MODEL, add_ab_model
from tests.redis_cluster import (
    LocalCluster,
    cli,
    exact_admissions,
    failover_under_load,
    policy_follows_failover,
    redis_cluster,  # noqa: F401 (a fixture)
)
from tests.test_ratelimit_gcra import slow_rule
from tests.test_ratelimit_redis_down import answered, decisions
from tests.waiting import wait_until

MakeLimiter = Callable[..., RateLimiter]
BURST = 20


def slot_tag(model: str) -> str:
    return f"{{{model}}}"  # the hash tag of every bucket key of `model`


def models_on(cluster: LocalCluster, count: int, *, master: int | None = None) -> list[str]:
    """`count` model names whose buckets live on distinct masters, or all on `master`."""
    found: dict[int, str] = {}
    names = []
    for n in range(1000):
        model = f"m{n}"
        owner = cluster.master_of(slot_tag(model))
        if master is None and owner not in found:
            found[owner] = model
            names.append(model)
        elif owner == master:
            names.append(model)
        if len(names) == count:
            return names
    raise AssertionError("not enough model names")


@pytest.fixture
async def make_limiter(redis_cluster: LocalCluster) -> AsyncIterator[MakeLimiter]:  # noqa: F811
    """Limiters on the cluster, leases off (each check's answer is Redis's), a generous
    timeout unless the test sets one."""
    made: list[RateLimiter] = []

    def make(*rules: LimitRule, metrics: GatewayMetrics | None = None,
             **settings: Any) -> RateLimiter:
        settings = {"timeout_ms": 2000, "lease_max_share": 0.0, **settings}
        config = RedisConfig(redis_cluster.url, mode="cluster", **settings)
        limiter = build_limiter(config, lambda: rules, metrics)
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        await limiter.close()


async def test_limits_are_exact_on_every_shard_and_the_script_loads_where_needed(
        redis_cluster: LocalCluster, make_limiter: MakeLimiter) -> None:  # noqa: F811
    models = models_on(redis_cluster, 3)
    limiter = make_limiter(slow_rule("per-model", tuple(models), burst=BURST))
    for model in models:
        assert await exact_admissions(limiter, model, "exact", BURST + 10) == BURST
    for model in models:  # each master ran the script (EVAL loaded it after NOSCRIPT)
        assert cli(redis_cluster.master_of(slot_tag(model)), "SCRIPT", "EXISTS", SHA) == "1"
    for port in redis_cluster.live():  # a node that lost its scripts loads it again
        cli(port, "SCRIPT", "FLUSH")
    assert await exact_admissions(limiter, models[0], "flushed", BURST + 10) == BURST


async def test_a_timeout_shorter_than_reading_the_layout_does_not_open_the_breaker(
        redis_cluster: LocalCluster, make_limiter: MakeLimiter) -> None:  # noqa: F811
    """A process's first read of the cluster's layout takes longer than 20 ms (redis-py parses
    the COMMAND table): the check fails open, and the breaker, which one real failure would
    open, stays closed."""
    model = models_on(redis_cluster, 1)[0]
    metrics = GatewayMetrics()
    limiter = make_limiter(slow_rule("quick", (model,), burst=BURST), metrics=metrics,
                           timeout_ms=20, breaker_failures=1, breaker_reset_s=600)
    assert not await answered(limiter, model)
    assert decisions(metrics, "quick", "failed_open") == 1
    assert metrics.registry.get_sample_value(
        "gateway_breaker_state", {"breaker": "redis", "state": "closed"}) == 1


async def test_a_moving_slot_is_followed_through_ask_then_moved_and_no_count_is_lost(
        redis_cluster: LocalCluster, make_limiter: MakeLimiter) -> None:  # noqa: F811
    model = models_on(redis_cluster, 1)[0]
    metrics = GatewayMetrics()
    limiter = make_limiter(slow_rule("moving", (model,), burst=BURST), metrics=metrics)
    assert await exact_admissions(limiter, model, "before", 6) == 6
    slot = str(key_slot(slot_tag(model).encode()))
    source = redis_cluster.master_of(slot_tag(model))
    target = next(port for port in redis_cluster.masters() if port != source)
    source_id, target_id = (cli(port, "CLUSTER", "MYID") for port in (source, target))
    held = int(cli(source, "CLUSTER", "COUNTKEYSINSLOT", slot))  # this test's, earlier tests'
    assert cli(target, "CLUSTER", "SETSLOT", slot, "IMPORTING", source_id) == "OK"
    assert cli(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", target_id) == "OK"
    # A key the source does not hold is asked for on the target (ASK), which lacks the script.
    assert await exact_admissions(limiter, model, "during", BURST + 5) == BURST
    assert cli(target, "CLUSTER", "COUNTKEYSINSLOT", slot) == "1"
    keys = cli(source, "CLUSTER", "GETKEYSINSLOT", slot, str(held)).split()
    assert cli(source, "MIGRATE", "127.0.0.1", str(target), "", "0", "5000",
               "KEYS", *keys) == "OK"
    for port in redis_cluster.masters():
        assert cli(port, "CLUSTER", "SETSLOT", slot, "NODE", target_id) == "OK"
    # The client still sends to the source, which now answers MOVED; the count carried over.
    assert await exact_admissions(limiter, model, "before", BURST) == BURST - 6
    assert cli(target, "CLUSTER", "COUNTKEYSINSLOT", slot) == str(held + 1)
    assert decisions(metrics, "moving", "failed_open") == 0
    redis_cluster.wait_healthy()


async def test_a_master_killed_under_load_fails_over_then_limits_are_exact_again(
        redis_cluster: LocalCluster, make_limiter: MakeLimiter) -> None:  # noqa: F811
    master = redis_cluster.master_of(slot_tag(models_on(redis_cluster, 1)[0]))
    lenient, strict, exact = models_on(redis_cluster, 3, master=master)
    timeout_ms = 100
    metrics = GatewayMetrics()
    limiter = make_limiter(slow_rule("lenient", (lenient,), burst=10**6, on_redis_error="open"),
                           slow_rule("strict", (strict,), burst=10**6, on_redis_error="closed"),
                           slow_rule("exact", (exact,), burst=BURST),
                           metrics=metrics, timeout_ms=timeout_ms, breaker_failures=3,
                           breaker_reset_s=0.2)
    try:
        await failover_under_load(limiter, metrics, lambda: redis_cluster.kill(master),
                                  lenient, strict, timeout_ms / 1000)
        assert redis_cluster.master_of(slot_tag(exact)) != master  # a replica took over
        await wait_until(lambda: answered(limiter, exact))
        assert await exact_admissions(limiter, exact, "after", BURST + 10) == BURST
    finally:
        redis_cluster.heal()


@pytest.fixture
def replica(redis_cluster: LocalCluster, make_client: Callable[..., Any],  # noqa: F811
            repo: Path) -> Callable[[], Any]:
    """Starts one more gateway sharing policies through the cluster: `url` names one node,
    `nodes` the others (the one in `url` may be the master the test kills)."""
    add_ab_model(repo)
    nodes = ", ".join(f'"127.0.0.1:{port}"' for port in list(redis_cluster.servers)[1:])

    async def start() -> TestClient:
        return await make_client(  # type: ignore[no-any-return]
            f'{AB_MODEL}\n[redis]\nmode = "cluster"\nurl = "{redis_cluster.url}"\n'
            f"nodes = [{nodes}]\n")

    return start


async def test_a_policy_change_reaches_every_replica_across_a_failover(
        redis_cluster: LocalCluster, replica: Callable[[], Any]) -> None:  # noqa: F811
    holder = redis_cluster.master_of("{gateway:policy}")
    try:
        await policy_follows_failover(replica, lambda: redis_cluster.kill(holder))
    finally:
        redis_cluster.heal()
