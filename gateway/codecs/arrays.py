"""Nested JSON lists to typed numpy arrays and back, with errors that say what was wrong.

Numbers become the target dtype as TF Serving's JSON converts them (`json_tensor.cc`): booleans
only for BOOL and never mixed with numbers, integers only for integer types and within their
range, integers for FP32/FP64 only where TF Serving calls them lossless (|v| <= 2**24 - 1,
2**53 - 1), floats within the target's finite range (NaN and Infinity literals pass). FP16, BF16
and UINT16, which TF Serving's JSON cannot express, follow the same rules with only the range
check for integers. Every shape is checked against the decode budget before an array is built.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from itertools import chain
from typing import Any

import ml_dtypes
import numpy as np

from gateway import dtypes
from gateway.codecs.budget import DEFAULT_BUDGET, DecodeBudget, RequestTally
from gateway.dtypes import DType
from gateway.errors import BadRequest

_KIND_WORDS = {"f": "numbers", "i": "integers", "u": "non-negative integers", "b": "booleans",
               "V": "numbers"}
# TF Serving's lossless limit for integers given to float types: (1 << digits) - 1.
_LOSSLESS_INT = {"FP32": (1 << 24) - 1, "FP64": (1 << 53) - 1}
# Largest finite value of each float type (`np.finfo` knows no bfloat16).
_FLOAT_MAX = {d.v2: float(ml_dtypes.finfo(d.numpy).max)  # type: ignore[no-untyped-call]
              for d in dtypes.BY_V2.values() if d.numpy.kind in "fV"}
# Integers rapidjson reads as Int64/Uint64 (larger ones are doubles, range-checked only).
_INT64_MIN, _UINT64_END = -(1 << 63), 1 << 64


def _plain_bounds(dtype: DType) -> dict[frozenset[type], tuple[float, float]]:
    """The types of plain values `dtype` takes as they are, each with the range within which
    `_convert` accepts every value and converts it exactly as `np.array(..., dtype)` does."""
    kind = dtype.numpy.kind
    if kind == "b":
        return {frozenset({bool}): (False, True)}
    if kind in "iu":
        info = np.iinfo(dtype.numpy)
        return {frozenset({int}): (int(info.min), int(info.max))}
    if kind != "f":  # BYTES; BF16 (ml_dtypes takes no Python int past int64) is rare in JSON
        return {}
    limit = _FLOAT_MAX[dtype.v2]
    ints = min(limit, _LOSSLESS_INT.get(dtype.v2, limit))
    return {frozenset({float}): (-limit, limit), frozenset({int}): (-ints, ints),
            frozenset({int, float}): (-ints, ints)}


_PLAIN_BOUNDS = {v2: _plain_bounds(d) for v2, d in dtypes.BY_V2.items()}
# Past about 200 elements numpy's checks on the array cost less than Python's (measured).
_PLAIN_MAX_ELEMENTS = 128


def to_array(value: Any, dtype: DType, name: str, *, budget: DecodeBudget = DEFAULT_BUDGET,
             tally: RequestTally | None = None, batch: bool = True) -> np.ndarray:
    """A JSON value (scalar or nested lists) as an array of `dtype`; refuses ragged lists,
    lossy conversions (1.5 as an integer) and mixed element types, and shapes over `budget`
    (or over the request-wide `tally`, which counts this tensor). `batch=False` when the
    nesting is not the tensor's shape (v2's `data`): its leading dim is then no row count."""
    if tally is not None:
        budget = tally.budget
    if dtype.is_bytes:
        return _bytes_array(value, name, budget, tally, batch)
    shape = _first_shape(value, name, budget)
    if tally is not None:
        count = tally.add(name, shape)
    else:
        count = budget.check_shape(name, shape, batch=batch)
    if count <= _PLAIN_MAX_ELEMENTS:
        plain = _plain_numbers(value, shape, count, dtype)
        if plain is not None:
            return plain
    try:
        natural = np.asarray(value)
    except ValueError:  # ragged, or deeper than numpy's 64 dims somewhere past the first row
        raise BadRequest(f"input {name!r}: ragged nested lists (rows differ in length)") from None
    if natural.shape != shape:  # numpy saw through a list it took for a leaf
        raise BadRequest(f"input {name!r}: ragged nested lists (rows differ in length)")
    if not natural.size:
        return np.empty(shape, dtype=dtype.numpy)
    return _convert(value, natural, dtype, name)


def _first_shape(value: Any, name: str, budget: DecodeBudget) -> tuple[int, ...]:
    """The shape nested lists declare along their first elements: exact unless they are
    ragged, which numpy refuses next. Iterative, so depth costs no recursion."""
    shape: list[int] = []
    while type(value) is list:
        shape.append(len(value))
        budget.check_nesting(name, len(shape))
        if not value:
            break
        value = value[0]
    return tuple(shape)


def _plain_numbers(value: Any, shape: tuple[int, ...], count: int,
                   dtype: DType) -> np.ndarray | None:
    """A small tensor of plain numbers (as `[[0.5, -1.25]]`) in one `np.array` call: numbers
    of types the target takes (`_PLAIN_BOUNDS`), their extremes within its range and lossless
    limit, so no check of `_convert` can fail and no cast can overflow. None when not sure
    (ragged, empty, other types, a NaN first or a value past the bounds): the careful path
    then decides, and words the error."""
    try:  # a string or object where a list should be yields strings, refused below
        flat = list(_leaves(value, len(shape)))
    except TypeError:  # a number where a list should be: ragged
        return None
    if len(flat) != count or not flat:
        return None
    bounds = _PLAIN_BOUNDS[dtype.v2].get(frozenset(map(type, flat)))
    # min() and max() are NaN if the first value is (the bounds then fail), else the extremes
    # of the values that are not NaN (NaN passes anyway)
    if bounds is None or not (bounds[0] <= min(flat) and max(flat) <= bounds[1]):
        return None
    try:
        array = np.array(value, dtype=dtype.numpy)
    except ValueError:  # rows of different lengths
        return None
    return array if array.shape == shape else None


def _convert(value: Any, natural: np.ndarray, dtype: DType, name: str) -> np.ndarray:
    target = dtype.numpy
    kind = "V" if target.kind == "V" else target.kind  # bfloat16 is a 'V' kind in numpy
    natural_kind = natural.dtype.kind
    if kind == "b":
        if natural_kind != "b":
            raise _expected(dtype, kind, name, _describe(natural))
        return natural
    if natural_kind == "b":
        raise _expected(dtype, kind, name, "booleans")
    if natural_kind not in "iufO":
        raise _expected(dtype, kind, name, _describe(natural))
    types = set(map(type, _leaves(value, natural.ndim)))
    if not types <= {int, float, bool}:
        raise _expected(dtype, kind, name, _describe(natural))
    if bool in types:
        raise _expected(dtype, kind, name, "booleans mixed with numbers")
    if kind in "iu":
        if float in types:
            raise _expected(dtype, kind, name, "numbers with fractions")
        return _integers(value, natural, dtype, name)
    return _floats(value, natural, types, dtype, name)


def _integers(value: Any, natural: np.ndarray, dtype: DType, name: str) -> np.ndarray:
    info = np.iinfo(dtype.numpy)
    if natural.dtype.kind in "iu":
        if natural.min() < info.min or natural.max() > info.max:
            raise BadRequest(f"input {name!r}: values out of range for {dtype.v2}")
        return natural.astype(dtype.numpy, copy=False)
    # numpy could not hold these in one int64 or uint64 array ([-1, 2**63], [0, 2**64 - 1])
    # and made them floats or objects: the exact Python ints decide
    flat = list(_leaves(value, natural.ndim))
    if min(flat) < info.min or max(flat) > info.max:
        raise BadRequest(f"input {name!r}: values out of range for {dtype.v2}")
    return np.array(flat, dtype=dtype.numpy).reshape(natural.shape)


def _floats(value: Any, natural: np.ndarray, types: set[type], dtype: DType,
            name: str) -> np.ndarray:
    limit = _FLOAT_MAX[dtype.v2]
    lossless = _LOSSLESS_INT.get(dtype.v2)
    if natural.dtype.kind in "iu":  # integers only: their extremes decide
        _check_ints((int(natural.min()), int(natural.max())), limit, lossless, dtype, name)
    elif natural.dtype.kind == "O":  # integers too wide for numpy (2**64 and up) among them
        leaves = list(_leaves(value, natural.ndim))
        _check_ints([v for v in leaves if type(v) is int], limit, lossless, dtype, name)
        natural = np.array([float(v) for v in leaves], dtype=np.float64).reshape(natural.shape)
    else:
        magnitude = np.abs(natural)
        if int in types and lossless is not None and (magnitude > lossless).any():
            # some value is large: the Python ints among the values decide (floats may be)
            _check_ints([v for v in _leaves(value, natural.ndim) if type(v) is int], limit,
                        lossless, dtype, name)
        if (magnitude[np.isfinite(magnitude)] > limit).any():
            raise BadRequest(f"input {name!r}: values out of range for {dtype.v2}")
    with np.errstate(over="ignore", invalid="ignore"):
        return natural.astype(dtype.numpy, copy=False)


def _check_ints(ints: Iterable[int], limit: float, lossless: int | None, dtype: DType,
                name: str) -> None:
    """Integers for a float type: within its range and, for FP32/FP64, lossless as TF Serving
    defines it (integers beyond uint64 are doubles to rapidjson: only the range applies)."""
    for v in ints:
        if abs(v) > limit:
            raise BadRequest(f"input {name!r}: values out of range for {dtype.v2}")
        if lossless is not None and abs(v) > lossless and _INT64_MIN <= v < _UINT64_END:
            raise BadRequest(f"input {name!r}: integer {v} cannot become {dtype.v2} "
                             f"without loss of precision (the limit is +-{lossless})")


def _leaves(value: Any, ndim: int) -> Iterable[Any]:
    """The scalars of nested lists numpy found regular to `ndim` dims, row-major."""
    if ndim == 0:
        return (value,)
    leaves: Iterable[Any] = value
    for _ in range(ndim - 1):
        leaves = chain.from_iterable(leaves)
    return leaves


def _expected(dtype: DType, kind: str, name: str, got: str) -> BadRequest:
    return BadRequest(f"input {name!r}: expected {dtype.v2} ({_KIND_WORDS[kind]}), got {got}")


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


def flat_bytes(value: Any, name: str, *, budget: DecodeBudget = DEFAULT_BUDGET) -> list[bytes]:
    """Strings (and `{"b64": ...}` objects) in nested lists, flattened row-major."""
    _, leaves = _nested(value, name, budget)
    return _encode_leaves(leaves, name)


def nested_shape(value: Any, name: str, *,
                 budget: DecodeBudget = DEFAULT_BUDGET) -> tuple[int, ...]:
    """Shape of nested lists, refusing ragged ones; `{"b64"}` objects and strings are leaves."""
    return _nested(value, name, budget)[0]


def _bytes_array(value: Any, name: str, budget: DecodeBudget, tally: RequestTally | None,
                 batch: bool) -> np.ndarray:
    shape, leaves = _nested(value, name, budget, batch)
    if tally is not None:
        tally.add(name, shape, text=True)
    else:
        budget.check_text(name, len(leaves))
    flat = _encode_leaves(leaves, name)
    array = np.empty(len(flat), dtype=object)
    array[:] = flat
    return array.reshape(shape)


def _nested(value: Any, name: str, budget: DecodeBudget,
            batch: bool = True) -> tuple[tuple[int, ...], list[Any]]:
    """Shape and row-major leaves of nested lists, one level at a time (no recursion, so no
    depth can exhaust the stack): every list of a level must have the same length."""
    shape: list[int] = []
    level = [value]
    while True:
        types = set(map(type, level))
        if list not in types:
            return tuple(shape), level
        lengths = set(map(len, level)) if types == {list} else set()
        if len(lengths) != 1:
            raise BadRequest(f"input {name!r}: ragged nested lists (rows differ in length)")
        shape.append(lengths.pop())
        budget.check_nesting(name, len(shape))
        # the elements so far, before the next level is built
        budget.check_shape(name, shape, batch=batch)
        level = list(chain.from_iterable(level))


def _encode_leaves(leaves: list[Any], name: str) -> list[bytes]:
    if set(map(type, leaves)) <= {str}:  # the common case, without a Python loop
        try:
            return list(map(str.encode, leaves))
        except UnicodeEncodeError:
            pass  # the loop below names the element
    out: list[bytes] = []
    for index, value in enumerate(leaves):
        if isinstance(value, str):
            try:
                out.append(value.encode())
            except UnicodeEncodeError:
                raise BadRequest(f"input {name!r}: element {index} is not valid Unicode (a lone "
                                 "surrogate such as \\ud800)") from None
        elif isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
            try:
                out.append(base64.b64decode(value["b64"], validate=True))
            except ValueError:  # binascii.Error, or non-ASCII text
                raise BadRequest(f"input {name!r}: invalid base64 in {{\"b64\": ...}}") from None
        else:
            raise BadRequest(f"input {name!r}: expected BYTES (strings or {{\"b64\": ...}}), got "
                             f"{type(value).__name__} {_short(value)}")
    return out


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _describe(natural: np.ndarray) -> str:
    kind = natural.dtype.kind
    return {"f": "numbers with fractions", "i": "integers", "u": "integers", "b": "booleans",
            "U": "strings", "O": "mixed values (objects, strings or nulls)"}.get(kind, str(kind))


def _text(value: bytes | str) -> str:
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _b64_object(value: bytes | str) -> dict[str, str]:
    raw = value.encode() if isinstance(value, str) else value
    return {"b64": base64.b64encode(raw).decode()}
