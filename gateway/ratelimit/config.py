"""`[redis]` in gateway.toml: where limits and policies are shared across replicas."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.tomlconfig import Table


@dataclass(frozen=True)
class RedisConfig:
    url: str


def parse_redis_config(t: Table) -> RedisConfig | None:
    url = t.text("url", "")
    t.finish()
    return RedisConfig(url) if url else None
