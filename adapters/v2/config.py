"""`kind = "v2"`: Open Inference Protocol v2 servers (Triton, KServe, MLServer) over gRPC;
requests balance across `endpoints`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from adapters.pool_config import POOL_KEYS, PoolConfig, parse_addresses, parse_pool
from gateway.tomlconfig import Table


@dataclass(frozen=True)
class V2AdapterConfig:
    name: str
    endpoints: tuple[str, ...]  # gRPC `inference.GRPCInferenceService`, "host:port"
    pool: PoolConfig = field(default_factory=PoolConfig)
    kind: str = "v2"


def parse(name: str, t: Table, base_dir: Path) -> V2AdapterConfig:
    t.expect(("kind", "endpoints", *POOL_KEYS))
    return V2AdapterConfig(name=name, endpoints=parse_addresses(t, "endpoints"),
                           pool=parse_pool(t))
