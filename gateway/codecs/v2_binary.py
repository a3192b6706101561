"""Tensors as raw bytes, as the Open Inference Protocol carries them outside JSON and typed
fields: gRPC's `raw_input_contents` / `raw_output_contents` and REST's binary tensor data
extension (Triton's `binary_tensor_data`, the default of `tritonclient.http`). The layout is
little-endian, row-major and unpadded; BOOL is one byte; a BYTES element is a 4-byte
little-endian length, then its bytes.

On REST the request's `Inference-Header-Content-Length` says where its JSON ends; the binary
data of every input whose `parameters` carry `binary_data_size` follows, in input order. Every
size is checked against the tensor's shape and against the bytes that are left before a tensor
is built from them.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence

import numpy as np

from gateway.codecs import offload
from gateway.dtypes import DType
from gateway.errors import BadRequest

#: The header, on requests and replies, giving the length of the JSON before the binary data.
HEADER_LENGTH = "Inference-Header-Content-Length"
#: The media type of a reply that carries binary data, as Triton sends it.
CONTENT_TYPE = "application/octet-stream"
_DIGITS = re.compile(r"[0-9]{1,19}")
_LENGTH = struct.Struct("<I")


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """A REST body's JSON header and the binary data after it (none without the header)."""
    if header_length is None:
        return body, memoryview(b"")
    text = header_length.strip()
    if not _DIGITS.fullmatch(text):
        raise BadRequest(f"{HEADER_LENGTH} must be a non-negative integer, got "
                         f"{text[:24]!r}")
    length = int(text)
    if length > len(body):
        raise BadRequest(f"{HEADER_LENGTH} is {length}, but the body has {len(body)} bytes")
    return body[:length], memoryview(body)[length:]


class BinaryData:
    """The binary data after a REST request's JSON, handed out to inputs in order."""

    __slots__ = ("_data", "_offset")

    def __init__(self, data: memoryview) -> None:
        self._data = data
        self._offset = 0

    def take(self, name: str, size: object, dtype: DType, shape: Sequence[int],
             count: int) -> memoryview:
        """The next `size` bytes, for an input whose shape is already within budget."""
        if type(size) is not int or size < 0:
            raise BadRequest(f"input {name!r}: 'binary_data_size' must be a non-negative "
                             f"integer")
        if dtype.is_bytes and size < 4 * count:
            raise BadRequest(f"input {name!r}: binary_data_size is {size}; {count} BYTES "
                             f"elements need at least {4 * count} (a 4-byte length each)")
        check_size(size, dtype, shape, count, name, f"binary_data_size is {size}")
        left = len(self._data) - self._offset
        if size > left:
            raise BadRequest(f"input {name!r}: binary_data_size is {size}, but only {left} "
                             f"bytes of binary data are left after the JSON header "
                             f"({HEADER_LENGTH})")
        start = self._offset
        self._offset += size
        return self._data[start:self._offset]

    def finish(self) -> None:
        """Every byte must belong to an input."""
        extra = len(self._data) - self._offset
        if extra:
            raise BadRequest(f"{extra} bytes of binary data follow the inputs' binary data "
                             f"({self._offset} bytes by their binary_data_size)")


def check_size(size: int, dtype: DType, shape: Sequence[int], count: int, name: str,
               what: str) -> None:
    """Raw data of a fixed-size type must be exactly its elements' bytes (BYTES elements are
    counted as they are split); `what` names the size in the error."""
    if not dtype.is_bytes and size != count * dtype.numpy.itemsize:
        raise BadRequest(f"input {name!r}: {what}, shape {list(shape)} of {dtype.v2} needs "
                         f"{count * dtype.numpy.itemsize}")


def from_raw(data: bytes | memoryview, dtype: DType, shape: Sequence[int], count: int,
             name: str) -> np.ndarray:
    """A tensor from raw bytes whose size was checked against its shape (`check_size`);
    fixed-size types are views of `data`, not copies."""
    if not dtype.is_bytes:
        array = np.frombuffer(data, dtype=dtype.numpy.newbyteorder("<"))
        if dtype.numpy.kind == "b":  # any non-zero byte is true
            array = array.view(np.uint8) != 0
        return array.reshape(shape)
    items = split_bytes(bytes(data), count, name)
    if len(items) != count:
        raise BadRequest(f"input {name!r}: raw BYTES hold {len(items)} elements, shape "
                         f"{list(shape)} needs {count}")
    return offload.object_array(items).reshape(shape)


def split_bytes(data: bytes, count: int, name: str) -> list[bytes]:
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


def to_raw(array: np.ndarray, dtype: DType) -> bytes:
    """An output tensor's raw bytes (text elements as UTF-8)."""
    if dtype.is_bytes:
        parts = []
        for item in array.reshape(-1):
            data = item if isinstance(item, bytes) else str(item).encode()
            parts += [_LENGTH.pack(len(data)), data]
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
