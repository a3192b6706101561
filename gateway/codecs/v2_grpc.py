"""Open Inference Protocol v2 gRPC messages to numpy and back.

Inputs come as typed `contents` or as `raw_input_contents` (little-endian bytes; BYTES elements
each prefixed by a 4-byte little-endian length, as Triton's clients send them). Outputs always
go back as `raw_output_contents`, which every v2 client reads and which costs no per-element
Python work. Shapes are checked against the decode budget and sizes against shapes before a
tensor is built; BYTES elements are split with numpy when they share one length (the raw
layout is `v2_binary`'s, shared with REST's binary tensor data). Request `parameters` become
plain values for backends.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from gateway import dtypes
from gateway.codecs import offload, v2_binary
from gateway.codecs.budget import DEFAULT_BUDGET, DecodeBudget
from gateway.codecs.tensor_proto import narrow_ints
from gateway.dtypes import DType
from gateway.errors import BadRequest
from gateway.types import InferResponse, ModelMetadata, Tensors
from protos.inference import grpc_service_pb2 as pb

_CONTENTS_FIELD = {
    "BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
    "UINT32": "uint_contents", "UINT64": "uint64_contents", "INT8": "int_contents",
    "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


def decode_inputs(request: pb.ModelInferRequest, *,
                  budget: DecodeBudget = DEFAULT_BUDGET) -> Tensors:
    """A ModelInferRequest's inputs, every shape checked against `budget` (each tensor and the
    request's total) and every size against its shape before any tensor is built."""
    return {plan.name: plan.build()
            for plan in _plan(request.inputs, request.raw_input_contents, budget)}


async def decode_inputs_async(request: pb.ModelInferRequest, *,
                              budget: DecodeBudget = DEFAULT_BUDGET) -> Tensors:
    """`decode_inputs` for the event loop: the checks run inline; building runs in a worker
    thread when the request has enough BYTES elements to hold the loop (`offload`)."""
    plans = _plan(request.inputs, request.raw_input_contents, budget)
    strings = sum(plan.count for plan in plans if plan.dtype.is_bytes)
    return await offload.run(lambda: {plan.name: plan.build() for plan in plans},
                             per_element_work=strings)


def decode_outputs(reply: pb.ModelInferResponse, budget: DecodeBudget) -> Tensors:
    """A v2 backend's ModelInferResponse as tensors, from `raw_output_contents` or typed
    `contents`, checked as a client's inputs are (errors name each output as an input)."""
    return {plan.name: plan.build()
            for plan in _plan(reply.outputs, reply.raw_output_contents, budget, "output")}


@dataclass(frozen=True, slots=True)
class _Input:
    name: str
    dtype: DType
    shape: tuple[int, ...]
    count: int
    raw: Any  # the request's raw_input_contents, or None: then `contents` hold the values
    index: int
    contents: Any
    data: bytes | None = None  # raw_input_contents[index], once read

    def build(self) -> np.ndarray:
        if self.raw is not None:  # reading copies the bytes: BYTES are read off the loop
            data = self.raw[self.index] if self.data is None else self.data
            return v2_binary.from_raw(data, self.dtype, self.shape, self.count, self.name)
        return _from_contents(self.contents, self.dtype, self.shape, self.name)


def _plan(tensors: Sequence[Any], raw: Sequence[bytes], budget: DecodeBudget,
          side: str = "input") -> list[_Input]:
    """`tensors` (a request's inputs or a reply's outputs) and their raw contents, if any."""
    if raw and len(raw) != len(tensors):
        raise BadRequest(f"{len(raw)} raw_{side}_contents for {len(tensors)} {side}s")
    tally = budget.request()
    plans: list[_Input] = []
    names: set[str] = set()
    for index, tensor in enumerate(tensors):
        dtype = dtypes.BY_V2.get(tensor.datatype)
        if dtype is None:
            raise BadRequest(f"input {tensor.name!r}: unknown datatype {tensor.datatype!r}")
        budget.check_rank(tensor.name, len(tensor.shape))
        shape = tuple(tensor.shape)
        if any(d < 0 for d in shape):
            raise BadRequest(f"input {tensor.name!r}: negative dim in shape {list(shape)}")
        if tensor.name in names:
            raise BadRequest(f"input {tensor.name!r} appears twice")
        names.add(tensor.name)
        count = tally.add(tensor.name, shape, text=dtype.is_bytes)
        plans.append(_Input(tensor.name, dtype, shape, count, raw if raw else None, index,
                            tensor.contents))
    for at, plan in enumerate(plans):  # sizes against shapes, once all shapes are in budget
        if plan.raw is None:
            _check_contents_size(plan.contents, plan.dtype, plan.shape, plan.count, plan.name)
        elif not plan.dtype.is_bytes:  # BYTES elements are counted as they are split
            data = plan.raw[plan.index]
            v2_binary.check_size(len(data), plan.dtype, plan.shape, plan.count, plan.name,
                                 f"{len(data)} raw bytes")
            plans[at] = replace(plan, data=data)
    return plans


def _check_contents_size(contents: Any, dtype: DType, shape: tuple[int, ...], count: int,
                         name: str) -> None:
    field = _CONTENTS_FIELD.get(dtype.v2)
    if field is None:
        raise BadRequest(f"input {name!r}: {dtype.v2} travels only in raw_input_contents")
    given = len(getattr(contents, field))
    if given != count:
        raise BadRequest(f"input {name!r}: {given} values in contents, shape "
                         f"{list(shape)} needs {count}")


def _from_contents(contents: Any, dtype: DType, shape: tuple[int, ...],
                   name: str) -> np.ndarray:
    values = getattr(contents, _CONTENTS_FIELD[dtype.v2])
    if dtype.is_bytes:
        array = offload.object_array(values)
    elif dtype.numpy.kind in "iu" and dtype.numpy.itemsize < 4:  # 8/16-bit ints in 32 bits
        array = narrow_ints(values, dtype, f"input {name!r}", dtype.v2)
    else:
        array = np.asarray(values, dtype=dtype.numpy)
    return array.reshape(shape)


def parameters(fields: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    """Request parameters as plain values, passed on to backends (unset ones left out)."""
    values: dict[str, Any] = {}
    for key, parameter in fields.items():
        choice = parameter.WhichOneof("parameter_choice")
        if choice is not None:
            values[key] = getattr(parameter, choice)
    return values


def encode_response(response: InferResponse) -> pb.ModelInferResponse:
    reply = pb.ModelInferResponse(model_name=response.model, model_version=response.version,
                                  id=response.id or "")
    for name, array in response.outputs.items():
        dtype = dtypes.of_array(array)
        reply.outputs.add(name=name, datatype=dtype.v2, shape=list(array.shape))
        reply.raw_output_contents.append(v2_binary.to_raw(array, dtype))
    return reply


def metadata_response(metadata: ModelMetadata) -> pb.ModelMetadataResponse:
    def tensors(specs: Any) -> list[pb.ModelMetadataResponse.TensorMetadata]:
        return [pb.ModelMetadataResponse.TensorMetadata(name=s.name, datatype=s.dtype.v2,
                                                        shape=list(s.shape)) for s in specs]

    return pb.ModelMetadataResponse(name=metadata.name, versions=list(metadata.versions),
                                    platform=metadata.platform, inputs=tensors(metadata.inputs),
                                    outputs=tensors(metadata.outputs))
