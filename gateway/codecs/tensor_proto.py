"""TensorFlow's `TensorProto` to numpy and back, without TensorFlow.

Numeric tensors travel as `tensor_content` (raw little-endian bytes, the fast path); on the way
in the typed `*_val` fields are read too, including TF's rule that a single value fills the
whole shape. Strings travel as `string_val`. Shapes and value counts are checked against the
decode budget before a tensor is built, so 36 bytes cannot declare a 400 MB broadcast.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from gateway import dtypes
from gateway.codecs import offload
from gateway.codecs.budget import DEFAULT_BUDGET, DecodeBudget, RequestTally
from gateway.dtypes import DType
from gateway.errors import BadRequest
from gateway.types import Tensors
from protos.tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

TensorProto = tensor_pb2.TensorProto

# Which repeated field carries each dtype's values when `tensor_content` is empty.
_VALUE_FIELD = {
    "DT_FLOAT": "float_val", "DT_DOUBLE": "double_val", "DT_INT32": "int_val",
    "DT_INT16": "int_val", "DT_INT8": "int_val", "DT_UINT8": "int_val", "DT_UINT16": "int_val",
    "DT_INT64": "int64_val", "DT_BOOL": "bool_val", "DT_STRING": "string_val",
    "DT_HALF": "half_val", "DT_BFLOAT16": "half_val", "DT_UINT32": "uint32_val",
    "DT_UINT64": "uint64_val",
}


# Built once: looking names up in the enum descriptor per tensor shows in profiles.
_BY_ENUM = {types_pb2.DataType.Value(tf): dtype for tf, dtype in dtypes.BY_TF.items()}


def dtype_of(enum_value: int, name: str) -> DType:
    dtype = _BY_ENUM.get(enum_value)
    if dtype is None:
        tf_name = types_pb2.DataType.Name(enum_value) \
            if enum_value in types_pb2.DataType.values() else str(enum_value)
        raise BadRequest(f"tensor {name!r}: unsupported dtype {tf_name}")
    return dtype


def decode_inputs(inputs: Mapping[str, tensor_pb2.TensorProto], *,
                  budget: DecodeBudget = DEFAULT_BUDGET) -> Tensors:
    """A PredictRequest's inputs, every shape checked against `budget` (each tensor and the
    request's total) before any tensor is built."""
    tally = budget.request()
    plans = [_plan(proto, name, tally) for name, proto in inputs.items()]
    return {name: _build(proto, name, dtype, shape) for name, proto, dtype, shape in plans}


async def decode_inputs_async(inputs: Mapping[str, tensor_pb2.TensorProto], *,
                              budget: DecodeBudget = DEFAULT_BUDGET) -> Tensors:
    """`decode_inputs` for the event loop: the checks run inline; building runs in a worker
    thread when the request has enough strings to hold the loop (`offload`)."""
    tally = budget.request()
    plans = [_plan(proto, name, tally) for name, proto in inputs.items()]
    strings = sum(len(proto.string_val) for _, proto, dtype, _ in plans if dtype.is_bytes)
    return await offload.run(
        lambda: {name: _build(proto, name, dtype, shape) for name, proto, dtype, shape in plans},
        per_element_work=strings)


def to_array(proto: tensor_pb2.TensorProto, name: str, *,
             budget: DecodeBudget | None = None) -> np.ndarray:
    """One tensor, checked against `budget` if given. Without one it is for a trusted source
    (a backend's reply, whose size the model decides); a client's tensors go through
    `decode_inputs`, which always has a budget."""
    _, _, dtype, shape = _plan(proto, name, budget.request() if budget is not None else None)
    return _build(proto, name, dtype, shape)


_Plan = tuple[str, tensor_pb2.TensorProto, DType, tuple[int, ...]]


def _plan(proto: tensor_pb2.TensorProto, name: str, tally: RequestTally | None) -> _Plan:
    """Dtype and shape, checked: the shape against the budget, the number of values against
    the shape, all before anything is allocated."""
    dtype = dtype_of(proto.dtype, name)
    dims = proto.tensor_shape.dim
    if tally is not None:
        tally.budget.check_rank(name, len(dims))
    shape = tuple(d.size for d in dims)
    if any(d < 0 for d in shape):
        raise BadRequest(f"tensor {name!r}: shape {list(shape)} has unknown dims")
    count = (tally.add(name, shape, text=dtype.is_bytes) if tally is not None
             else math.prod(shape))
    if dtype.is_bytes:
        given = len(proto.string_val)
    elif proto.tensor_content:
        expected = count * dtype.numpy.itemsize
        if len(proto.tensor_content) != expected:
            raise BadRequest(f"tensor {name!r}: tensor_content has {len(proto.tensor_content)} "
                             f"bytes, shape {list(shape)} of {dtype.tf} needs {expected}")
        return name, proto, dtype, shape
    else:
        given = len(getattr(proto, _VALUE_FIELD[dtype.tf]))
    if given != count and given != 1:  # TF fills the whole tensor with a lone value
        raise BadRequest(f"tensor {name!r}: {given} values for shape {list(shape)} "
                         f"({count} elements)")
    return name, proto, dtype, shape


def _build(proto: tensor_pb2.TensorProto, name: str, dtype: DType,
           shape: tuple[int, ...]) -> np.ndarray:
    if dtype.is_bytes:
        return _fill(offload.object_array(proto.string_val), shape)
    if proto.tensor_content:
        array = np.frombuffer(proto.tensor_content, dtype=dtype.numpy)
        if dtype.numpy.kind == "b":  # any non-zero byte is true, as in TF
            array = array.view(np.uint8) != 0
        return array.reshape(shape)
    field = _VALUE_FIELD[dtype.tf]
    raw = getattr(proto, field)
    if field == "half_val":  # 16-bit floats travel as their bit patterns in int32s (low 16)
        array = (np.asarray(raw, dtype=np.int64) & 0xFFFF).astype(np.uint16).view(dtype.numpy)
    elif field == "int_val" and dtype.numpy.itemsize < 4:  # 8/16-bit ints in int32s
        array = narrow_ints(raw, dtype, f"tensor {name!r}", dtype.tf)
    else:
        array = np.asarray(raw, dtype=dtype.numpy)
    return _fill(array, shape)


def _fill(values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if values.size == 1 and math.prod(shape) != 1:  # one value fills the shape (checked)
        return np.full(shape, values[0], dtype=values.dtype)
    return values.reshape(shape)


def narrow_ints(values: object, dtype: DType, what: str, type_name: str) -> np.ndarray:
    """Integers sent in a wider field (int32 for 8 and 16-bit types) as `dtype`; a value that
    does not fit is refused rather than wrapped around."""
    wide = np.asarray(values, dtype=np.int64)
    info = np.iinfo(dtype.numpy)
    if wide.size and (wide.min() < info.min or wide.max() > info.max):
        raise BadRequest(f"{what}: values out of range for {type_name}")
    return wide.astype(dtype.numpy)


def from_array(array: np.ndarray) -> tensor_pb2.TensorProto:
    dtype = dtypes.of_array(array)
    proto = tensor_pb2.TensorProto(
        dtype=types_pb2.DataType.Value(dtype.tf),
        tensor_shape=shape_proto(array.shape))
    if dtype.is_bytes:
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode()
                                for v in array.reshape(-1))
    else:
        proto.tensor_content = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")
                                                    ).tobytes()
    return proto


def shape_proto(shape: tuple[int, ...]) -> tensor_shape_pb2.TensorShapeProto:
    return tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in shape])
