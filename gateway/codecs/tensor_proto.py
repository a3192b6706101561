"""TensorFlow's `TensorProto` to numpy and back, without TensorFlow.

Numeric tensors travel as `tensor_content` (raw little-endian bytes, the fast path); on the way
in the typed `*_val` fields are read too, including TF's rule that a single value fills the
whole shape. Strings travel as `string_val`. Shapes and value counts are checked against the
decode budget before a tensor is built, so 36 bytes cannot declare a 400 MB broadcast.
"""

from __future__ import annotations

import functools
import math
import sys
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
_ENUM = {tf: types_pb2.DataType.Value(tf) for tf in dtypes.BY_TF}
_BY_ENUM = {_ENUM[tf]: dtype for tf, dtype in dtypes.BY_TF.items()}
_LITTLE_ENDIAN = sys.byteorder == "little"


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
    return {plan[0]: _build(*plan) for plan in plans}


async def decode_inputs_async(inputs: Mapping[str, tensor_pb2.TensorProto], *,
                              budget: DecodeBudget = DEFAULT_BUDGET) -> Tensors:
    """`decode_inputs` for the event loop: the checks run inline; building runs in a worker
    thread when the request has enough strings to hold the loop (`offload`)."""
    tally = budget.request()
    plans = [_plan(proto, name, tally) for name, proto in inputs.items()]
    strings = sum(len(proto.string_val) for _, proto, dtype, _, _ in plans if dtype.is_bytes)
    return await offload.run(lambda: {plan[0]: _build(*plan) for plan in plans},
                             per_element_work=strings)


def to_array(proto: tensor_pb2.TensorProto, name: str, *,
             budget: DecodeBudget | None = None) -> np.ndarray:
    """One tensor, checked against `budget` if given. Without one it is for a trusted source
    (a backend's reply, whose size the model decides); a client's tensors go through
    `decode_inputs`, which always has a budget."""
    return _build(*_plan(proto, name, budget.request() if budget is not None else None))


# name, proto, dtype, shape and `tensor_content`, read once: each read of a bytes field copies
_Plan = tuple[str, tensor_pb2.TensorProto, DType, tuple[int, ...], bytes]


def _plan(proto: tensor_pb2.TensorProto, name: str, tally: RequestTally | None) -> _Plan:
    """Dtype and shape, checked: the shape against the budget, the number of values against
    the shape, all before anything is allocated."""
    dtype = dtype_of(proto.dtype, name)
    if tally is not None:
        tally.budget.check_rank(name, len(proto.tensor_shape.dim))
    shape = _sizes(proto.tensor_shape)
    if shape and min(shape) < 0:
        raise BadRequest(f"tensor {name!r}: shape {list(shape)} has unknown dims")
    count = (tally.add(name, shape, text=dtype.is_bytes) if tally is not None
             else math.prod(shape))
    content = b"" if dtype.is_bytes else proto.tensor_content
    if content:
        expected = count * dtype.numpy.itemsize
        if len(content) != expected:
            raise BadRequest(f"tensor {name!r}: tensor_content has {len(content)} "
                             f"bytes, shape {list(shape)} of {dtype.tf} needs {expected}")
        return name, proto, dtype, shape, content
    given = len(proto.string_val if dtype.is_bytes else getattr(proto, _VALUE_FIELD[dtype.tf]))
    if given != count and given != 1:  # TF fills the whole tensor with a lone value
        raise BadRequest(f"tensor {name!r}: {given} values for shape {list(shape)} "
                         f"({count} elements)")
    return name, proto, dtype, shape, content


def _sizes(shape: tensor_shape_pb2.TensorShapeProto) -> tuple[int, ...]:
    """The dims' sizes. A small shape's come from a cache keyed by its wire bytes: reading the
    dims one message object at a time costs twice as much, and shapes repeat."""
    key = shape.SerializeToString()
    if len(key) > _SMALL_SHAPE_BYTES:
        return tuple([d.size for d in shape.dim])
    return _cached_sizes(key)


_SMALL_SHAPE_BYTES = 64  # four dims of any size, more of small ones: a bounded cache


@functools.lru_cache(maxsize=256)
def _cached_sizes(key: bytes) -> tuple[int, ...]:
    return tuple([d.size for d in tensor_shape_pb2.TensorShapeProto.FromString(key).dim])


def _build(name: str, proto: tensor_pb2.TensorProto, dtype: DType, shape: tuple[int, ...],
           content: bytes) -> np.ndarray:
    if dtype.is_bytes:
        return _fill(offload.object_array(proto.string_val), shape)
    if content:
        array = np.frombuffer(content, dtype=dtype.numpy)
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
    proto = tensor_pb2.TensorProto()
    write_array(proto, array)
    return proto


def write_array(proto: tensor_pb2.TensorProto, array: np.ndarray) -> None:
    """`array` into an empty `proto`, in place: into a map's entry (`request.inputs[name]`)
    this costs less than building a message to copy it in."""
    dtype = dtypes.of_array(array)
    proto.dtype = _ENUM[dtype.tf]
    proto.tensor_shape.CopyFrom(_shared_shape_proto(array.shape))
    if dtype.is_bytes:
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode()
                                for v in array.reshape(-1))
    else:
        if not (_LITTLE_ENDIAN and array.dtype.isnative):
            array = array.astype(array.dtype.newbyteorder("<"))
        proto.tensor_content = array.tobytes()  # in C order, whatever the array's strides


def shape_proto(shape: tuple[int, ...]) -> tensor_shape_pb2.TensorShapeProto:
    return tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in shape])


@functools.lru_cache(maxsize=256)
def _shared_shape_proto(shape: tuple[int, ...]) -> tensor_shape_pb2.TensorShapeProto:
    """`shape_proto`, built once per shape (building the dims costs more than copying them):
    only for `CopyFrom`, so no caller can change the one all share."""
    return shape_proto(shape)
