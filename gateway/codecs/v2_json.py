"""The Open Inference Protocol v2 JSON (KServe, Triton, MLServer): typed tensors with `shape`,
`datatype` and nested or flat row-major `data`, checked against the decode budget; or, with
Triton's binary tensor data extension (`v2_binary`), tensors whose data follows the JSON."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway import dtypes
from gateway.codecs import jsonio, v2_binary
from gateway.codecs.arrays import from_array, to_array
from gateway.codecs.budget import DEFAULT_BUDGET, DecodeBudget, RequestTally
from gateway.dtypes import DType
from gateway.errors import BadRequest
from gateway.types import InferResponse, ModelMetadata, Tensors, TensorSpec


@dataclass(frozen=True, slots=True)
class BinaryOutputs:
    """Which outputs go back as binary data: the request's `binary_data_output` parameter,
    unless a requested output's own `binary_data` parameter says otherwise."""

    default: bool = False
    named: Mapping[str, bool] = field(default_factory=dict)

    def __call__(self, name: str) -> bool:
        return self.named.get(name, self.default)


_ALL_JSON = BinaryOutputs()  # the common choice, shared rather than built per request


@dataclass(slots=True)
class V2Request:
    inputs: Tensors
    outputs: tuple[str, ...] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    id: str | None = None
    binary_outputs: BinaryOutputs = field(default_factory=BinaryOutputs)


#: Request parameters that say how the reply travels, not what the model does: kept from
#: backends.
TRANSPORT_PARAMETERS = frozenset({"binary_data_output"})
_SHARED_MEMORY = "shared_memory_region"


def parse_infer(document: Any, *, budget: DecodeBudget = DEFAULT_BUDGET,
                binary: memoryview | None = None) -> V2Request:
    """An inference request, every tensor checked against `budget` (each one and the
    request's total), and every input's binary data (`binary`: what follows the JSON header)
    against its shape and the bytes left, before any array is built; strings that would be
    echoed (`id`, names) must be valid Unicode, so no reply can fail to encode after
    inference ran."""
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
    parameters = _parameters(document.get("parameters"), "'parameters'")
    default_binary = parameters.get("binary_data_output", False)
    if not isinstance(default_binary, bool):
        raise BadRequest("parameter 'binary_data_output' must be a boolean")
    tally = budget.request()
    data = v2_binary.BinaryData(memoryview(b"") if binary is None else binary)
    plans: list[_Plan] = []
    names: set[str] = set()
    for index, tensor in enumerate(tensors):
        plan = _plan(tensor, index, tally.budget, tally, data)
        if plan.name in names:
            raise BadRequest(f"input {plan.name!r} appears twice")
        names.add(plan.name)
        plans.append(plan)
    data.finish()
    outputs, named = _requested(document.get("outputs"))
    inputs = {plan.name: plan.build(tally.budget) for plan in plans}
    return V2Request(inputs, outputs,
                     {k: v for k, v in parameters.items() if k not in TRANSPORT_PARAMETERS},
                     request_id, BinaryOutputs(default_binary, named)
                     if default_binary or named else _ALL_JSON)


def _requested(requested: Any) -> tuple[tuple[str, ...] | None, dict[str, bool]]:
    """The requested outputs' names, and the binary choice of those that make one."""
    if requested is None:
        return None, {}
    if not isinstance(requested, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in requested):
        raise BadRequest("'outputs' must be a list of objects with a 'name'")
    named: dict[str, bool] = {}
    for output in requested:
        name = output["name"]
        _check_text(name, "output name")
        parameters = _parameters(output.get("parameters"), f"output {name!r} 'parameters'")
        if "classification" in parameters:
            raise BadRequest(f"output {name!r}: the classification extension is not supported")
        if _SHARED_MEMORY in parameters:
            raise BadRequest(f"output {name!r}: shared memory is not supported; ask for "
                             "binary data instead")
        if "binary_data" in parameters:
            if not isinstance(parameters["binary_data"], bool):
                raise BadRequest(f"output {name!r}: parameter 'binary_data' must be a boolean")
            named[name] = parameters["binary_data"]
    return tuple(o["name"] for o in requested), named


def _parameters(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be an object")
    return value


def decode_tensor(tensor: Any, index: int, *, budget: DecodeBudget = DEFAULT_BUDGET,
                  tally: RequestTally | None = None) -> tuple[str, np.ndarray]:
    """One tensor object with its `data` in the JSON; its declared shape is checked against
    the budget (and counted in the request's `tally`) before its data is read."""
    if tally is not None:
        budget = tally.budget
    plan = _plan(tensor, index, budget, tally, None)
    return plan.name, plan.build(budget)


@dataclass(slots=True)
class _Plan:
    """One input, checked but not yet built: its data is a JSON value or binary bytes (not
    frozen: a frozen dataclass costs a microsecond more to build, once per input)."""

    name: str
    datatype: DType
    shape: list[int]
    count: int
    data: Any
    binary: memoryview | None

    def build(self, budget: DecodeBudget) -> np.ndarray:
        if self.binary is not None:
            return v2_binary.from_raw(self.binary, self.datatype, self.shape, self.count,
                                      self.name)
        array = to_array(self.data, self.datatype, self.name, budget=budget, batch=False)
        if array.size != self.count:
            raise BadRequest(f"input {self.name!r}: shape {self.shape} needs {self.count} "
                             f"elements, 'data' has {array.size}")
        return array.reshape(self.shape)


def _plan(tensor: Any, index: int, budget: DecodeBudget, tally: RequestTally | None,
          binary: v2_binary.BinaryData | None) -> _Plan:
    if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
        raise BadRequest(f"inputs[{index}] must be an object with a 'name'")
    name = tensor["name"]
    _check_text(name, f"inputs[{index}] name")
    datatype_name = tensor.get("datatype")
    datatype = dtypes.BY_V2.get(datatype_name) if isinstance(datatype_name, str) else None
    if datatype is None:
        raise BadRequest(f"input {name!r}: unknown datatype {_short(tensor.get('datatype'))} "
                         f"(one of {', '.join(dtypes.BY_V2)})")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(
            type(d) is int and d >= 0 for d in shape[:budget.max_dims + 1]):
        raise BadRequest(f"input {name!r}: 'shape' must be a list of non-negative integers")
    count = (tally.add(name, shape, text=datatype.is_bytes) if tally is not None
             else budget.check_shape(name, shape))
    if tally is None and datatype.is_bytes:
        budget.check_text(name, count)
    parameters = _parameters(tensor.get("parameters"), f"input {name!r} 'parameters'")
    if _SHARED_MEMORY in parameters:
        raise BadRequest(f"input {name!r}: shared memory is not supported; send the data as "
                         "binary data or JSON")
    if "binary_data_size" in parameters:
        if "data" in tensor:
            raise BadRequest(f"input {name!r}: has both 'data' and binary_data_size")
        if binary is None:
            raise BadRequest(f"input {name!r}: binary data is not accepted here")
        piece = binary.take(name, parameters["binary_data_size"], datatype, shape, count)
        return _Plan(name, datatype, shape, count, None, piece)
    if "data" not in tensor:
        raise BadRequest(f"input {name!r}: missing 'data' (or a binary_data_size parameter)")
    return _Plan(name, datatype, shape, count, tensor["data"], None)


def _check_text(text: str, what: str) -> None:
    try:
        text.encode()
    except UnicodeEncodeError:
        raise BadRequest(f"{what} is not valid Unicode (a lone surrogate such as \\ud800)"
                         ) from None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True, slots=True)
class V2Reply:
    """An infer reply: the JSON document, and the binary data of the outputs that travel as
    binary data, in the order of `outputs` (`nonfinite`: NaN or Infinity in the JSON's)."""

    document: dict[str, Any]
    binary: list[bytes]
    nonfinite: bool


def encode_reply(response: InferResponse,
                 binary_outputs: BinaryOutputs = BinaryOutputs()) -> V2Reply:
    outputs, binary, in_json = [], [], {}
    for name, array in response.outputs.items():
        if binary_outputs(name):
            dtype = dtypes.of_array(array)
            data = v2_binary.to_raw(array, dtype)
            binary.append(data)
            outputs.append({"name": name, "datatype": dtype.v2,
                            "shape": list(array.shape),
                            "parameters": {"binary_data_size": len(data)}})
        else:
            outputs.append(encode_tensor(name, array))
            in_json[name] = array
    document: dict[str, Any] = {"model_name": response.model,
                                "model_version": response.version, "outputs": outputs}
    if response.id is not None:
        document["id"] = response.id
    return V2Reply(document, binary, jsonio.has_nonfinite(in_json))


def encode_infer(response: InferResponse) -> dict[str, Any]:
    """An infer reply all in JSON."""
    return encode_reply(response).document


def encode_tensor(name: str, array: np.ndarray) -> dict[str, Any]:
    return {"name": name, "datatype": dtypes.of_array(array).v2, "shape": list(array.shape),
            "data": from_array(array.reshape(-1))}


def encode_metadata(metadata: ModelMetadata) -> dict[str, Any]:
    def specs(items: tuple[TensorSpec, ...]) -> list[dict[str, Any]]:
        return [{"name": s.name, "datatype": s.dtype.v2, "shape": list(s.shape)} for s in items]

    return {"name": metadata.name, "versions": list(metadata.versions),
            "platform": metadata.platform, "inputs": specs(metadata.inputs),
            "outputs": specs(metadata.outputs)}
