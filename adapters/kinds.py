"""The backend kinds, the one place that lists them: `kind = "..."` in an `[adapters.NAME]`
table picks a row. Adding a backend is one folder `adapters/<kind>/` (its config dataclass and
`parse`, its adapter and `build`) and one line here."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters import onnx, tfserving, torchserve, v2
from adapters.onnx import config as onnx_config
from gateway.backend import Adapter, BackendConfig
from gateway.metrics import GatewayMetrics
from gateway.model_config import ModelConfig
from gateway.tomlconfig import Table


@dataclass(frozen=True)
class BackendKind:
    #: `(name, table, config file's directory)`: the kind's keys, checked; errors name the key.
    parse: Callable[[str, Table, Path], BackendConfig]
    #: `(config from parse, the models config names for it, metrics)`: the adapter.
    build: Callable[[Any, Mapping[str, ModelConfig], GatewayMetrics], Adapter]


KINDS: Mapping[str, BackendKind] = {
    "onnx": BackendKind(onnx_config.parse, onnx.build),
    "tfserving": BackendKind(tfserving.parse, tfserving.build),
    "torchserve": BackendKind(torchserve.parse, torchserve.build),
    "v2": BackendKind(v2.parse, v2.build),
}


def build_adapter(config: BackendConfig, models: Mapping[str, ModelConfig],
                  metrics: GatewayMetrics) -> Adapter:
    return KINDS[config.kind].build(config, models, metrics)
