"""`kind = "torchserve"`: inference over REST (or gRPC), model status and metadata over the
gRPC management API; each API's requests balance across its endpoints."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from adapters.pool_config import POOL_KEYS, PoolConfig, parse_addresses, parse_pool
from gateway.tomlconfig import Table


@dataclass(frozen=True)
class TorchServeAdapterConfig:
    name: str
    management_endpoints: tuple[str, ...]  # gRPC management API, "host:port"
    # rest | grpc: which inference API the gateway calls. REST carries everything a client and
    # a handler exchange; gRPC loses headers, statuses and content types (docs/api.md).
    protocol: str = "rest"
    endpoints: tuple[str, ...] = ()  # gRPC inference API, "host:port"
    rest_endpoints: tuple[str, ...] = ()  # REST inference API, "http://host:port"
    # gRPC needs to know which handlers stream: TorchServe 0.12 answers the wrong call with
    # one part only (Predictions) or by restarting the worker (StreamPredictions).
    streaming_models: tuple[str, ...] = ()
    discovery_interval_s: float = 5.0
    pool: PoolConfig = field(default_factory=PoolConfig)
    kind: str = "torchserve"


def parse(name: str, t: Table, base_dir: Path) -> TorchServeAdapterConfig:
    t.expect(("kind", "management_endpoints", "protocol", "endpoints", "rest_endpoints",
              "streaming_models", "discovery_interval_s", *POOL_KEYS))
    d = TorchServeAdapterConfig(name=name, management_endpoints=())
    protocol = t.text("protocol", d.protocol, choices=("rest", "grpc"))
    return TorchServeAdapterConfig(
        name=name,
        management_endpoints=parse_addresses(t, "management_endpoints"),
        protocol=protocol,
        endpoints=parse_addresses(t, "endpoints", required=protocol == "grpc"),
        rest_endpoints=parse_addresses(t, "rest_endpoints", required=protocol == "rest",
                                       url=True),
        streaming_models=t.texts("streaming_models"),
        discovery_interval_s=t.number("discovery_interval_s", d.discovery_interval_s,
                                      minimum=0.05),
        pool=parse_pool(t),
    )
