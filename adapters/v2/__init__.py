"""Open Inference Protocol v2 backends (Triton, KServe, MLServer) over gRPC."""

from __future__ import annotations

from collections.abc import Mapping

from adapters.v2.adapter import V2Adapter
from adapters.v2.config import V2AdapterConfig, parse
from gateway.backend import Adapter
from gateway.metrics import GatewayMetrics
from gateway.model_config import ModelConfig

__all__ = ["V2Adapter", "V2AdapterConfig", "build", "parse"]


def build(config: V2AdapterConfig, models: Mapping[str, ModelConfig],
          metrics: GatewayMetrics) -> Adapter:
    return V2Adapter(config, dict(models), metrics)
