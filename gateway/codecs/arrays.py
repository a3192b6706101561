"""Nested JSON lists to typed numpy arrays and back, with errors that say what was wrong."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import numpy as np

from gateway import dtypes
from gateway.dtypes import DType
from gateway.errors import BadRequest

# Which natural kinds of a JSON-built array each target kind accepts.
_ACCEPTS = {"f": "iuf", "i": "iu", "u": "iu", "b": "b", "V": "iuf"}
_KIND_WORDS = {"f": "numbers", "i": "integers", "u": "non-negative integers", "b": "booleans",
               "V": "numbers"}


def to_array(value: Any, dtype: DType, name: str) -> np.ndarray:
    """A JSON value (scalar or nested lists) as an array of `dtype`; refuses ragged lists,
    lossy conversions (1.5 as an integer) and mixed element types."""
    if dtype.is_bytes:
        return _bytes_array(value, name)
    try:
        natural = np.asarray(value)
    except ValueError:
        raise BadRequest(f"input {name!r}: ragged nested lists (rows differ in length)") from None
    target = dtype.numpy
    kind = "V" if target.kind == "V" else target.kind  # bfloat16 is a 'V' kind in numpy
    if kind in "iu" and natural.dtype.kind in "fO" and natural.size:
        wide = _wide_integers(value, natural.shape, dtype, name)
        if wide is not None:
            return wide
    if natural.size and natural.dtype.kind not in _ACCEPTS.get(kind, ""):
        raise BadRequest(f"input {name!r}: expected {dtype.v2} ({_KIND_WORDS[kind]}), got "
                         f"{_describe(natural)}")
    if kind in "iu" and natural.size:
        info = np.iinfo(target)
        if natural.min() < info.min or natural.max() > info.max:
            raise BadRequest(f"input {name!r}: values out of range for {dtype.v2}")
    with np.errstate(over="ignore"):  # overflow to infinity is refused just below
        array = natural.astype(target, copy=False)
    if kind in "fV" and array.dtype != natural.dtype and not np.isfinite(array).all() and \
            (np.isinf(array) & np.isfinite(natural)).any():
        raise BadRequest(f"input {name!r}: values out of range for {dtype.v2}")
    return array


def _wide_integers(value: Any, shape: tuple[int, ...], dtype: DType,
                   name: str) -> np.ndarray | None:
    """JSON integers that numpy cannot hold in one int64 or uint64 array, so it made them
    floats or objects ([0, 2**64 - 1], [-1, 2**63]); None if they are not all integers."""
    flat = list(_leaves(value))
    if not all(type(v) is int for v in flat):
        return None
    info = np.iinfo(dtype.numpy)
    if min(flat) < info.min or max(flat) > info.max:
        raise BadRequest(f"input {name!r}: values out of range for {dtype.v2}")
    return np.array(flat, dtype=dtype.numpy).reshape(shape)


def _leaves(value: Any) -> Iterator[Any]:
    if isinstance(value, list):
        for item in value:
            yield from _leaves(item)
    else:
        yield value


def from_array(array: np.ndarray, *, b64: bool = False) -> Any:
    """An array as a JSON-ready value (numeric arrays stay arrays: `jsonio.dumps` writes them,
    float32 in its shortest form); bytes as UTF-8 text, or `{"b64": ...}` objects."""
    if array.dtype.kind in "US":  # text arrays count as BYTES (see `dtypes.of_array`)
        array = array.astype(object)
    if array.dtype == dtypes.BYTES_NUMPY:
        encode = _b64_object if b64 else _text
        return np.vectorize(encode, otypes=[object])(array).tolist() if array.size else \
            array.tolist()
    if array.ndim == 0:
        return array.item() if array.dtype.kind != "V" else float(array)
    if array.dtype.kind == "V":  # bfloat16: orjson knows no such type
        return array.astype(np.float32)
    return np.ascontiguousarray(array)  # orjson writes numpy arrays natively


def flat_bytes(value: Any, name: str) -> list[bytes]:
    """Strings (and `{"b64": ...}` objects) in nested lists, flattened row-major."""
    out: list[bytes] = []
    _collect_bytes(value, name, out)
    return out


def _bytes_array(value: Any, name: str) -> np.ndarray:
    shape = nested_shape(value, name)
    flat = flat_bytes(value, name)
    array = np.empty(len(flat), dtype=object)
    array[:] = flat
    return array.reshape(shape)


def nested_shape(value: Any, name: str) -> tuple[int, ...]:
    """Shape of nested lists, refusing ragged ones; `{"b64"}` objects and strings are leaves."""
    if not isinstance(value, list):
        return ()
    if not value:
        return (0,)
    inner = nested_shape(value[0], name)
    for item in value[1:]:
        if nested_shape(item, name) != inner:
            raise BadRequest(f"input {name!r}: ragged nested lists (rows differ in length)")
    return (len(value), *inner)


def _collect_bytes(value: Any, name: str, out: list[bytes]) -> None:
    if isinstance(value, list):
        for item in value:
            _collect_bytes(item, name, out)
    elif isinstance(value, str):
        out.append(value.encode())
    elif isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
        try:
            out.append(base64.b64decode(value["b64"], validate=True))
        except ValueError:  # binascii.Error, or non-ASCII text
            raise BadRequest(f"input {name!r}: invalid base64 in {{\"b64\": ...}}") from None
    else:
        raise BadRequest(f"input {name!r}: expected BYTES (strings or {{\"b64\": ...}}), got "
                         f"{type(value).__name__} {value!r:.40}")


def _describe(natural: np.ndarray) -> str:
    kind = natural.dtype.kind
    return {"f": "numbers with fractions", "i": "integers", "u": "integers", "b": "booleans",
            "U": "strings", "O": "mixed values (objects, strings or nulls)"}.get(kind, str(kind))


def _text(value: bytes | str) -> str:
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _b64_object(value: bytes | str) -> dict[str, str]:
    raw = value.encode() if isinstance(value, str) else value
    return {"b64": base64.b64encode(raw).decode()}
