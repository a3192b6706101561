"""The Open Inference Protocol v2 JSON (KServe, Triton, MLServer): typed tensors with `shape`,
`datatype` and nested or flat row-major `data`, checked against the decode budget."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway import dtypes
from gateway.codecs.arrays import from_array, to_array
from gateway.codecs.budget import DEFAULT_BUDGET, DecodeBudget, RequestTally
from gateway.errors import BadRequest
from gateway.types import InferResponse, ModelMetadata, Tensors, TensorSpec


@dataclass(slots=True)
class V2Request:
    inputs: Tensors
    outputs: tuple[str, ...] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    id: str | None = None


def parse_infer(document: Any, *, budget: DecodeBudget = DEFAULT_BUDGET) -> V2Request:
    """An inference request, every tensor checked against `budget` (each one and the
    request's total) before its array is built; strings that would be echoed (`id`, names)
    must be valid Unicode, so no reply can fail to encode after inference ran."""
    if not isinstance(document, dict):
        raise BadRequest("request body must be a JSON object")
    request_id = document.get("id")
    if request_id is not None:
        if not isinstance(request_id, str):
            raise BadRequest("'id' must be a string")
        _check_text(request_id, "'id'")
    tensors = document.get("inputs")
    if not isinstance(tensors, list) or not tensors:
        raise BadRequest("'inputs' must be a non-empty list of tensors")
    tally = budget.request()
    inputs: Tensors = {}
    for index, tensor in enumerate(tensors):
        name, array = decode_tensor(tensor, index, tally=tally)
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
        for output in outputs:
            _check_text(output, "output name")
    parameters = document.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest("'parameters' must be an object")
    return V2Request(inputs, outputs, parameters, request_id)


def decode_tensor(tensor: Any, index: int, *, budget: DecodeBudget = DEFAULT_BUDGET,
                  tally: RequestTally | None = None) -> tuple[str, np.ndarray]:
    """One tensor object; its declared shape is checked against the budget (and counted in
    the request's `tally`) before its data is read."""
    if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
        raise BadRequest(f"inputs[{index}] must be an object with a 'name'")
    name = tensor["name"]
    _check_text(name, f"inputs[{index}] name")
    datatype_name = tensor.get("datatype")
    datatype = dtypes.BY_V2.get(datatype_name) if isinstance(datatype_name, str) else None
    if datatype is None:
        raise BadRequest(f"input {name!r}: unknown datatype {_short(tensor.get('datatype'))} "
                         f"(one of {', '.join(dtypes.BY_V2)})")
    if tally is not None:
        budget = tally.budget
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(
            type(d) is int and d >= 0 for d in shape[:budget.max_dims + 1]):
        raise BadRequest(f"input {name!r}: 'shape' must be a list of non-negative integers")
    count = (tally.add(name, shape, text=datatype.is_bytes) if tally is not None
             else budget.check_shape(name, shape))
    if tally is None and datatype.is_bytes:
        budget.check_text(name, count)
    if "data" not in tensor:
        raise BadRequest(f"input {name!r}: missing 'data'")
    array = to_array(tensor["data"], datatype, name, budget=budget, batch=False)
    if array.size != count:
        raise BadRequest(f"input {name!r}: shape {shape} needs {count} elements, "
                         f"'data' has {array.size}")
    return name, array.reshape(shape)


def _check_text(text: str, what: str) -> None:
    try:
        text.encode()
    except UnicodeEncodeError:
        raise BadRequest(f"{what} is not valid Unicode (a lone surrogate such as \\ud800)"
                         ) from None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


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
