"""In-process ONNX Runtime backend: a TF Serving-style model repository with dynamic batching.

This package imports nothing at import time: the load probe's child process imports
`adapters.onnx.session` alone, without the adapter's batcher, metrics and tracing; `build`
imports the adapter when one is made."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from adapters.onnx.config import OnnxAdapterConfig
    from gateway.backend import Adapter
    from gateway.metrics import GatewayMetrics
    from gateway.model_config import ModelConfig


def build(config: OnnxAdapterConfig, models: Mapping[str, ModelConfig],
          metrics: GatewayMetrics) -> Adapter:
    from adapters.onnx.adapter import OnnxAdapter

    adapter = OnnxAdapter(config, dict(models), metrics)
    metrics.watch_queues(adapter.queue_depths)
    return adapter
