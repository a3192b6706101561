"""Open Inference Protocol v2 gRPC messages to numpy and back.

Inputs come as typed `contents` or as `raw_input_contents` (little-endian bytes; BYTES elements
each prefixed by a 4-byte little-endian length, as Triton's clients send them). Outputs always
go back as `raw_output_contents`, which every v2 client reads and which costs no per-element
Python work.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

from gateway import dtypes
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


def decode_inputs(request: pb.ModelInferRequest) -> Tensors:
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise BadRequest(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
    inputs: Tensors = {}
    for index, tensor in enumerate(request.inputs):
        dtype = dtypes.BY_V2.get(tensor.datatype)
        if dtype is None:
            raise BadRequest(f"input {tensor.name!r}: unknown datatype {tensor.datatype!r}")
        shape = tuple(tensor.shape)
        if any(d < 0 for d in shape):
            raise BadRequest(f"input {tensor.name!r}: negative dim in shape {list(shape)}")
        array = (_from_raw(raw[index], dtype, shape, tensor.name) if raw
                 else _from_contents(tensor.contents, dtype, shape, tensor.name))
        if tensor.name in inputs:
            raise BadRequest(f"input {tensor.name!r} appears twice")
        inputs[tensor.name] = array
    return inputs


def _from_raw(data: bytes, dtype: DType, shape: tuple[int, ...], name: str) -> np.ndarray:
    count = math.prod(shape)
    if dtype.is_bytes:
        items: list[bytes] = []
        offset = 0
        while offset < len(data):
            if offset + 4 > len(data):
                raise BadRequest(f"input {name!r}: truncated BYTES length prefix")
            (length,) = struct.unpack_from("<I", data, offset)
            if offset + 4 + length > len(data):
                raise BadRequest(f"input {name!r}: BYTES element {len(items)} has length "
                                 f"{length}, only {len(data) - offset - 4} bytes follow")
            items.append(bytes(data[offset + 4: offset + 4 + length]))
            offset += 4 + length
        if offset != len(data) or len(items) != count:
            raise BadRequest(f"input {name!r}: raw BYTES hold {len(items)} elements, shape "
                             f"{list(shape)} needs {count}")
        array = np.empty(count, dtype=object)
        array[:] = items
        return array.reshape(shape)
    if len(data) != count * dtype.numpy.itemsize:
        raise BadRequest(f"input {name!r}: {len(data)} raw bytes, shape {list(shape)} of "
                         f"{dtype.v2} needs {count * dtype.numpy.itemsize}")
    return np.frombuffer(data, dtype=dtype.numpy.newbyteorder("<")).reshape(shape)


def _from_contents(contents: Any, dtype: DType, shape: tuple[int, ...],
                   name: str) -> np.ndarray:
    field = _CONTENTS_FIELD.get(dtype.v2)
    if field is None:
        raise BadRequest(f"input {name!r}: {dtype.v2} travels only in raw_input_contents")
    values = getattr(contents, field)
    if dtype.is_bytes:
        array = np.empty(len(values), dtype=object)
        array[:] = list(values)
    elif dtype.numpy.kind in "iu" and dtype.numpy.itemsize < 4:  # 8/16-bit ints in 32 bits
        array = narrow_ints(values, dtype, f"input {name!r}", dtype.v2)
    else:
        array = np.asarray(values, dtype=dtype.numpy)
    if array.size != math.prod(shape):
        raise BadRequest(f"input {name!r}: {array.size} values in contents, shape "
                         f"{list(shape)} needs {math.prod(shape)}")
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
