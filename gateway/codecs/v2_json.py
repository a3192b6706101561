"""The Open Inference Protocol v2 JSON (KServe, Triton, MLServer): typed tensors with `shape`,
`datatype` and nested or flat row-major `data`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway import dtypes
from gateway.codecs.arrays import from_array, to_array
from gateway.errors import BadRequest
from gateway.types import InferResponse, ModelMetadata, Tensors, TensorSpec


@dataclass(slots=True)
class V2Request:
    inputs: Tensors
    outputs: tuple[str, ...] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    id: str | None = None


def parse_infer(document: Any) -> V2Request:
    if not isinstance(document, dict):
        raise BadRequest("request body must be a JSON object")
    tensors = document.get("inputs")
    if not isinstance(tensors, list) or not tensors:
        raise BadRequest("'inputs' must be a non-empty list of tensors")
    inputs: Tensors = {}
    for index, tensor in enumerate(tensors):
        name, array = decode_tensor(tensor, index)
        if name in inputs:
            raise BadRequest(f"input {name!r} appears twice")
        inputs[name] = array
    requested = document.get("outputs")
    outputs = None
    if requested is not None:
        if not isinstance(requested, list) or not all(
                isinstance(o, dict) and isinstance(o.get("name"), str) for o in requested):
            raise BadRequest("'outputs' must be a list of objects with a 'name'")
        outputs = tuple(o["name"] for o in requested)
    parameters = document.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest("'parameters' must be an object")
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest("'id' must be a string")
    return V2Request(inputs, outputs, parameters, request_id)


def decode_tensor(tensor: Any, index: int) -> tuple[str, np.ndarray]:
    if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
        raise BadRequest(f"inputs[{index}] must be an object with a 'name'")
    name = tensor["name"]
    datatype_name = tensor.get("datatype")
    datatype = dtypes.BY_V2.get(datatype_name) if isinstance(datatype_name, str) else None
    if datatype is None:
        raise BadRequest(f"input {name!r}: unknown datatype {tensor.get('datatype')!r} "
                         f"(one of {', '.join(dtypes.BY_V2)})")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise BadRequest(f"input {name!r}: 'shape' must be a list of non-negative integers")
    if "data" not in tensor:
        raise BadRequest(f"input {name!r}: missing 'data'")
    array = to_array(tensor["data"], datatype, name)
    if array.size != math.prod(shape):
        raise BadRequest(f"input {name!r}: shape {shape} needs {math.prod(shape)} elements, "
                         f"'data' has {array.size}")
    return name, array.reshape(shape)


def encode_infer(response: InferResponse) -> dict[str, Any]:
    document: dict[str, Any] = {
        "model_name": response.model,
        "model_version": response.version,
        "outputs": [encode_tensor(name, array) for name, array in response.outputs.items()],
    }
    if response.id is not None:
        document["id"] = response.id
    return document


def encode_tensor(name: str, array: np.ndarray) -> dict[str, Any]:
    return {"name": name, "datatype": dtypes.of_array(array).v2, "shape": list(array.shape),
            "data": from_array(array.reshape(-1))}


def encode_metadata(metadata: ModelMetadata) -> dict[str, Any]:
    def specs(items: tuple[TensorSpec, ...]) -> list[dict[str, Any]]:
        return [{"name": s.name, "datatype": s.dtype.v2, "shape": list(s.shape)} for s in items]

    return {"name": metadata.name, "versions": list(metadata.versions),
            "platform": metadata.platform, "inputs": specs(metadata.inputs),
            "outputs": specs(metadata.outputs)}
