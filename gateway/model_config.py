"""What `gateway.toml` says about one model: which backend serves it, which versions, its
labels, and (for backends the gateway batches for) its batching. Shared by the config loader
and every backend kind, so it imports neither."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from gateway.tomlconfig import Table, keys_of


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_size: int = 32
    max_queue_delay_ms: float = 0.0
    max_queue_size: int = 1024
    concurrent_batches: int = 1


@dataclass(frozen=True)
class ModelConfig:
    name: str
    adapter: str
    version_policy: str = "latest"  # latest | all | specific
    latest: int = 1
    versions: tuple[int, ...] = ()
    labels: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    batching: BatchingConfig | None = None


def parse_batching(t: Table, base: BatchingConfig) -> BatchingConfig:
    """A `batching` table; keys it leaves out keep `base`'s values."""
    t.expect(keys_of(BatchingConfig))
    config = BatchingConfig(
        max_batch_size=t.integer("max_batch_size", base.max_batch_size, minimum=1),
        max_queue_delay_ms=t.number("max_queue_delay_ms", base.max_queue_delay_ms, minimum=0),
        max_queue_size=t.integer("max_queue_size", base.max_queue_size, minimum=1),
        concurrent_batches=t.integer("concurrent_batches", base.concurrent_batches, minimum=1),
    )
    t.finish()
    return config
