"""The one table of tensor element types and their names in each dialect.

Internally a tensor is a numpy array; BYTES tensors are object arrays of `bytes` and BF16 uses
`ml_dtypes.bfloat16`, so every v2 datatype has a numpy home.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np


@dataclass(frozen=True, slots=True)
class DType:
    """One element type: its numpy dtype and its name in v2, TensorFlow and ONNX."""

    numpy: np.dtype
    v2: str
    tf: str
    onnx: str

    @property
    def is_bytes(self) -> bool:
        return self.v2 == "BYTES"


BYTES_NUMPY = np.dtype(object)

_ALL = (
    DType(np.dtype(np.bool_), "BOOL", "DT_BOOL", "tensor(bool)"),
    DType(np.dtype(np.uint8), "UINT8", "DT_UINT8", "tensor(uint8)"),
    DType(np.dtype(np.uint16), "UINT16", "DT_UINT16", "tensor(uint16)"),
    DType(np.dtype(np.uint32), "UINT32", "DT_UINT32", "tensor(uint32)"),
    DType(np.dtype(np.uint64), "UINT64", "DT_UINT64", "tensor(uint64)"),
    DType(np.dtype(np.int8), "INT8", "DT_INT8", "tensor(int8)"),
    DType(np.dtype(np.int16), "INT16", "DT_INT16", "tensor(int16)"),
    DType(np.dtype(np.int32), "INT32", "DT_INT32", "tensor(int32)"),
    DType(np.dtype(np.int64), "INT64", "DT_INT64", "tensor(int64)"),
    DType(np.dtype(np.float16), "FP16", "DT_HALF", "tensor(float16)"),
    DType(np.dtype(np.float32), "FP32", "DT_FLOAT", "tensor(float)"),
    DType(np.dtype(np.float64), "FP64", "DT_DOUBLE", "tensor(double)"),
    DType(np.dtype(ml_dtypes.bfloat16), "BF16", "DT_BFLOAT16", "tensor(bfloat16)"),
    DType(BYTES_NUMPY, "BYTES", "DT_STRING", "tensor(string)"),
)

BY_V2 = {d.v2: d for d in _ALL}
BY_ONNX = {d.onnx: d for d in _ALL}
BY_NUMPY = {d.numpy: d for d in _ALL}
BY_TF = {d.tf: d for d in _ALL}
BYTES = BY_V2["BYTES"]


def of_array(array: np.ndarray) -> DType:
    """The DType of an array; unicode arrays count as BYTES (they are encoded on the way)."""
    dtype = BY_NUMPY.get(array.dtype)
    if dtype is not None:
        return dtype
    if array.dtype.kind in "US":
        return BYTES
    raise TypeError(f"unsupported tensor element type {array.dtype}")
