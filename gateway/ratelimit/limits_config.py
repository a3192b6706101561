"""`[limits]` in gateway.toml: where the policy's `[[limits]]` are counted. Never nowhere: with
no Redis they are counted in each process's memory, said out loud at start and by
`gateway check-config`; `store = "redis"` refuses to start without one instead."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.ratelimit.config import RedisConfig
from gateway.tomlconfig import Table, keys_of

STORES = ("auto", "redis", "memory")


@dataclass(frozen=True)
class LimitsConfig:
    # auto: Redis when [redis] is set, else memory; redis: shared or refuse to start;
    # memory: per process even with a [redis] (which then only shares policies).
    store: str = "auto"
    memory_max_keys: int = 100_000  # buckets one process keeps; past it the stalest go

    def in_memory(self, redis: RedisConfig | None) -> bool:
        return self.store == "memory" or (self.store == "auto" and redis is None)


def parse_limits_config(t: Table, has_redis: bool) -> LimitsConfig:
    t.expect(keys_of(LimitsConfig))
    d = LimitsConfig()
    config = LimitsConfig(
        store=t.text("store", d.store, choices=STORES),
        memory_max_keys=t.integer("memory_max_keys", d.memory_max_keys, minimum=100),
    )
    if config.store == "redis" and not has_redis:
        raise t.error("store", "\"redis\" needs a [redis] section (without one, limits could "
                      "only be counted per process)")
    t.finish()
    return config


def memory_notice(limits: LimitsConfig, redis: RedisConfig | None, workers: int) -> str | None:
    """What to tell the operator of limits counted in memory (None: they are shared)."""
    if not limits.in_memory(redis):
        return None
    why = "[limits] store = \"memory\"" if limits.store == "memory" else "no [redis] section"
    return (f"[[limits]] are counted in each process's memory ({why}): each of the {workers} "
            f"worker process(es) of each replica admits a rule's full rate on its own, so a "
            f"caller spread across them may get up to {workers} x replicas times the limit; "
            "set [redis] to share them, or [limits] store = \"redis\" to refuse to start "
            "without it")
