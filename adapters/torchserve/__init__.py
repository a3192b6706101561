"""TorchServe backends: its gRPC (or REST) inference API and its gRPC management API."""

from __future__ import annotations

from collections.abc import Mapping

from adapters.torchserve.adapter import TorchServeAdapter
from adapters.torchserve.config import TorchServeAdapterConfig, parse
from gateway.backend import Adapter
from gateway.metrics import GatewayMetrics
from gateway.model_config import ModelConfig

__all__ = ["TorchServeAdapter", "TorchServeAdapterConfig", "build", "parse"]


def build(config: TorchServeAdapterConfig, models: Mapping[str, ModelConfig],
          metrics: GatewayMetrics) -> Adapter:
    return TorchServeAdapter(config, dict(models), metrics)
