"""`[redis]` parsing, rule validation and bucket keys: the limiter's inputs, without Redis."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.crc import key_slot

from gateway.config import ConfigError, load_config
from gateway.ratelimit.config import RedisConfig
from gateway.ratelimit.factory import build_limiter
from gateway.ratelimit.gcra_limiter import GcraLimiter
from gateway.ratelimit.keys import bucket_key
from gateway.ratelimit.limits_config import LimitsConfig
from gateway.ratelimit.memory import MemoryBuckets
from gateway.ratelimit.rules import LimitRule
from gateway.types import Principal, RequestContext


def load(tmp_path: Path, text: str) -> RedisConfig | None:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return load_config(path).redis


def test_defaults_and_explicit_values(tmp_path: Path) -> None:
    assert load(tmp_path, "") is None
    assert load(tmp_path, '[redis]\nurl = "redis://r:6379/0"\n') == RedisConfig(
        "redis://r:6379/0", timeout_ms=50, breaker_failures=3, breaker_reset_s=5.0,
        lease_max_share=0.05, lease_ttl_ms=1000)
    leases = load(tmp_path, '[redis]\nurl = "redis://r"\nlease_max_share = 0\n'
                            'lease_ttl_ms = 250\n')
    assert leases is not None and (leases.lease_max_share, leases.lease_ttl_ms) == (0, 250)
    assert load(tmp_path, '[redis]\nurl = "redis://r"\ntimeout_ms = 20\nbreaker_failures = 1\n'
                          'breaker_reset_s = 0.5\n') == RedisConfig("redis://r", 20, 1, 0.5)


def test_url_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_REDIS_URL", "rediss://:secret@r:6380/1")
    config = load(tmp_path, '[redis]\nurl_env = "GATEWAY_REDIS_URL"\n')
    assert config is not None and config.url == "rediss://:secret@r:6380/1"


@pytest.mark.parametrize(("text", "fragments"), [
    ('[redis]\nurl = "r:6379"\n', [":2:", "redis.url", "unix:// URL"]),
    ('[redis]\nurl = "redis://r"\nurl_env = "X"\n', [":3:", "redis.url_env", "not both"]),
    ('[redis]\nurl_env = "GATEWAY_TEST_UNSET"\n',
     ["redis.url_env", "GATEWAY_TEST_UNSET is not set"]),
    ('[redis]\ntimeout_ms = 10\n', ["redis", "set url or url_env"]),
    ('[redis]\nurl = "redis://r"\ntimeout_ms = 0\n', [":3:", "redis.timeout_ms", ">= 1"]),
    ('[redis]\nurl = "redis://r"\nbreaker_failures = 0\n', ["redis.breaker_failures", ">= 1"]),
    ('[redis]\nurl = "redis://r"\ntimeout = 5\n', ["redis.timeout", "unknown key"]),
    ('[redis]\nurl = "redis://r"\nlease_max_share = 1.5\n',
     [":3:", "redis.lease_max_share", "from 0 to 1"]),
    ('[redis]\nurl = "redis://r"\nlease_max_share = -0.1\n', ["redis.lease_max_share", ">= 0"]),
    ('[redis]\nurl = "redis://r"\nlease_ttl_ms = 5\n', ["redis.lease_ttl_ms", ">= 10"]),
])
def test_invalid_redis_sections(tmp_path: Path, text: str, fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as error:
        load(tmp_path, text)
    for fragment in fragments:
        assert fragment in str(error.value)


async def test_the_factory_counts_in_memory_without_redis() -> None:
    """Never unlimited: no Redis (or `store = "memory"`) counts in memory; Redis otherwise."""
    redis = RedisConfig("redis://127.0.0.1:1/0")
    for config, limits, memory in ((None, None, True), (redis, None, False),
                                   (redis, LimitsConfig(store="memory"), True)):
        limiter = build_limiter(config, lambda: (), limits=limits)
        assert isinstance(limiter, GcraLimiter)
        assert isinstance(limiter._runner, MemoryBuckets) is memory
        await limiter.close()


@pytest.mark.parametrize(("changes", "message"), [
    ({"name": ""}, "needs a name"),
    ({"rate": 0}, "rate and period_s"),
    ({"period_s": -1}, "rate and period_s"),
    ({"burst": 0}, "burst must be >= 1"),
    ({"cost": "bytes"}, "cost must be one of"),
    ({"on_redis_error": "maybe"}, "on_redis_error must be one of"),
])
def test_rules_refuse_values_the_arithmetic_cannot_use(changes: dict[str, object],
                                                       message: str) -> None:
    fields: dict[str, object] = {"name": "r", "models": ("*",), **changes}
    with pytest.raises(ValueError, match=message):
        LimitRule(**fields)  # type: ignore[arg-type]


def test_rule_arithmetic() -> None:
    rows = LimitRule("r", ("m",), rate=3, period_s=1, burst=5, cost="rows")
    assert rows.emission_interval_us() == 333_333
    assert rows.units(64) == 64
    assert LimitRule("r", ("m",)).units(64) == 1
    assert LimitRule("r", ("*",), rate=10**9).emission_interval_us() == 1


def of(principal: Principal) -> RequestContext:
    return RequestContext(frontend="test", headers={}, deadline=0.0, principal=principal)


def test_keys_count_by_the_rules_claim_and_share_a_hash_tag() -> None:
    alice = Principal("alice", {"tenant": "acme"})
    bob = Principal("bob", {"tenant": "acme"})
    per_user = LimitRule("user", ("*",))
    per_tenant = LimitRule("tenant", ("*",), key="tenant")
    assert bucket_key(per_user, of(alice), "demo") == "rl:{demo}:user:sub=alice"
    assert bucket_key(per_tenant, of(alice), "demo") == bucket_key(per_tenant, of(bob), "demo")
    assert bucket_key(per_tenant, of(Principal("carol")), "demo") == "rl:{demo}:tenant:tenant="
    # Every key a request touches must live in one Cluster slot: one script call reads them all.
    keys = [bucket_key(rule, of(alice), "demo") for rule in (per_user, per_tenant)]
    assert len({key_slot(key.encode()) for key in keys}) == 1


def test_keys_cannot_be_forged_by_claim_values() -> None:
    rule = LimitRule("user", ("*",))
    forged = bucket_key(rule, of(Principal("x}:{other")), "demo")
    assert forged == "rl:{demo}:user:sub=x%7D%3A%7Bother"
    assert bucket_key(LimitRule("a:b", ("*",)), of(Principal("c")), "m") != bucket_key(
        LimitRule("a", ("*",)), of(Principal("b:c")), "m")
    assert bucket_key(rule, of(Principal("a")), "m}x") == "rl:{m%7Dx}:user:sub=a"
