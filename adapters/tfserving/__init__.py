"""TF Serving backends over gRPC, without TensorFlow in the process."""

from __future__ import annotations

from collections.abc import Mapping

from adapters.tfserving.adapter import TfServingAdapter
from adapters.tfserving.config import TfServingAdapterConfig, parse
from gateway.backend import Adapter
from gateway.metrics import GatewayMetrics
from gateway.model_config import ModelConfig

__all__ = ["TfServingAdapter", "TfServingAdapterConfig", "build", "parse"]


def build(config: TfServingAdapterConfig, models: Mapping[str, ModelConfig],
          metrics: GatewayMetrics) -> Adapter:
    return TfServingAdapter(config, dict(models), metrics)
