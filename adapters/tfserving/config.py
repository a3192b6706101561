"""`kind = "tfserving"`: TF Serving backends over gRPC; requests balance across `endpoints`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from adapters.pool_config import POOL_KEYS, PoolConfig, parse_addresses, parse_pool
from gateway.tomlconfig import Table


@dataclass(frozen=True)
class TfServingAdapterConfig:
    name: str
    endpoints: tuple[str, ...]
    pool: PoolConfig = field(default_factory=PoolConfig)
    kind: str = "tfserving"


def parse(name: str, t: Table, base_dir: Path) -> TfServingAdapterConfig:
    t.expect(("kind", "endpoints", *POOL_KEYS))
    return TfServingAdapterConfig(name=name, endpoints=parse_addresses(t, "endpoints"),
                                  pool=parse_pool(t))
