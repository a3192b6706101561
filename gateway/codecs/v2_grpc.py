"""Open Inference Protocol v2 gRPC messages to numpy and back.

Inputs come as typed `contents` or as `raw_input_contents` (little-endian bytes; BYTES elements
each prefixed by a 4-byte little-endian length, as Triton's clients send them). Outputs always
go back as `raw_output_contents`, which every v2 client reads and which costs no per-element
Python work. Shapes are checked against the decode budget and sizes against shapes before a
tensor is built; BYTES elements are split with numpy when they share one length.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from gateway import dtypes
from gateway.codecs import offload
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
    return {plan.name: plan.build() for plan in _plan(request, budget)}


async def decode_inputs_async(request: pb.ModelInferRequest, *,
                              budget: DecodeBudget = DEFAULT_BUDGET) -> Tensors:
    """`decode_inputs` for the event loop: the checks run inline; building runs in a worker
    thread when the request has enough BYTES elements to hold the loop (`offload`)."""
    plans = _plan(request, budget)
    strings = sum(plan.count for plan in plans if plan.dtype.is_bytes)
    return await offload.run(lambda: {plan.name: plan.build() for plan in plans},
                             per_element_work=strings)


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
            return _from_raw(data, self.dtype, self.shape, self.count, self.name)
        return _from_contents(self.contents, self.dtype, self.shape, self.name)


def _plan(request: pb.ModelInferRequest, budget: DecodeBudget) -> list[_Input]:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise BadRequest(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
    tally = budget.request()
    plans: list[_Input] = []
    names: set[str] = set()
    for index, tensor in enumerate(request.inputs):
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
            _check_raw_size(data, plan.dtype, plan.shape, plan.count, plan.name)
            plans[at] = replace(plan, data=data)
    return plans


def _check_raw_size(data: bytes, dtype: DType, shape: tuple[int, ...], count: int,
                    name: str) -> None:
    if len(data) != count * dtype.numpy.itemsize:
        raise BadRequest(f"input {name!r}: {len(data)} raw bytes, shape {list(shape)} of "
                         f"{dtype.v2} needs {count * dtype.numpy.itemsize}")


def _check_contents_size(contents: Any, dtype: DType, shape: tuple[int, ...], count: int,
                         name: str) -> None:
    field = _CONTENTS_FIELD.get(dtype.v2)
    if field is None:
        raise BadRequest(f"input {name!r}: {dtype.v2} travels only in raw_input_contents")
    given = len(getattr(contents, field))
    if given != count:
        raise BadRequest(f"input {name!r}: {given} values in contents, shape "
                         f"{list(shape)} needs {count}")


_LENGTH = struct.Struct("<I")


def _from_raw(data: bytes, dtype: DType, shape: tuple[int, ...], count: int,
              name: str) -> np.ndarray:
    if not dtype.is_bytes:
        array = np.frombuffer(data, dtype=dtype.numpy.newbyteorder("<"))
        if dtype.numpy.kind == "b":  # any non-zero byte is true
            array = array.view(np.uint8) != 0
        return array.reshape(shape)
    items = _split_bytes(data, count, name)
    if len(items) != count:
        raise BadRequest(f"input {name!r}: raw BYTES hold {len(items)} elements, shape "
                         f"{list(shape)} needs {count}")
    return offload.object_array(items).reshape(shape)


def _split_bytes(data: bytes, count: int, name: str) -> list[bytes]:
    """At most `count` length-prefixed elements, and all of `data` must be in them. Elements of
    one length (the common case) are split by numpy; others one prefix at a time."""
    end = len(data)
    if count and end >= 4:
        (length,) = _LENGTH.unpack_from(data, 0)
        if end == count * (4 + length):
            records = np.frombuffer(data, dtype=np.dtype([("n", "<u4"), ("v", f"V{length}")]))
            if (records["n"] == length).all():
                values = records["v"]  # void elements: .tolist() gives bytes
                return [item for start in range(0, count, offload.CHUNK)
                        for item in values[start:start + offload.CHUNK].tolist()]
    items: list[bytes] = []
    append, unpack = items.append, _LENGTH.unpack_from
    offset = start = length = 0
    try:
        for _ in range(count):
            if offset >= end:
                break
            (length,) = unpack(data, offset)
            start = offset + 4
            offset = start + length
            append(data[start:offset])
    except struct.error:  # fewer than 4 bytes left for a length prefix
        raise BadRequest(f"input {name!r}: truncated BYTES length prefix") from None
    if offset > end:
        raise BadRequest(f"input {name!r}: BYTES element {len(items) - 1} has length "
                         f"{length}, only {end - start} bytes follow")
    if 0 < end - offset < 4:
        raise BadRequest(f"input {name!r}: truncated BYTES length prefix")
    if offset != end:
        raise BadRequest(f"input {name!r}: raw BYTES hold more than {count} elements "
                         f"({end - offset} bytes follow element {count - 1}), shape needs "
                         f"{count}")
    return items


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


def encode_response(response: InferResponse) -> pb.ModelInferResponse:
    reply = pb.ModelInferResponse(model_name=response.model, model_version=response.version,
                                  id=response.id or "")
    for name, array in response.outputs.items():
        dtype = dtypes.of_array(array)
        reply.outputs.add(name=name, datatype=dtype.v2, shape=list(array.shape))
        reply.raw_output_contents.append(_to_raw(array, dtype))
    return reply


def _to_raw(array: np.ndarray, dtype: DType) -> bytes:
    if dtype.is_bytes:
        parts = []
        for item in array.reshape(-1):
            data = item if isinstance(item, bytes) else str(item).encode()
            parts += [struct.pack("<I", len(data)), data]
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def metadata_response(metadata: ModelMetadata) -> pb.ModelMetadataResponse:
    def tensors(specs: Any) -> list[pb.ModelMetadataResponse.TensorMetadata]:
        return [pb.ModelMetadataResponse.TensorMetadata(name=s.name, datatype=s.dtype.v2,
                                                        shape=list(s.shape)) for s in specs]

    return pb.ModelMetadataResponse(name=metadata.name, versions=list(metadata.versions),
                                    platform=metadata.platform, inputs=tensors(metadata.inputs),
                                    outputs=tensors(metadata.outputs))
