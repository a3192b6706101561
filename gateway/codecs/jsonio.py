"""JSON bytes in and out: orjson on the fast path, the standard library for NaN and Infinity,
which TF Serving's JSON accepts and writes though strict JSON has no such literals."""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Any

import numpy as np
import orjson

from gateway import dtypes
from gateway.errors import BadRequest
from gateway.types import Tensors


def loads(body: bytes) -> Any:
    """A JSON document, refused (400) as TF Serving's parser refuses it: malformed, not UTF-8,
    a number no double can hold (`1e400`), a lone surrogate (`"\\ud800"`). NaN and Infinity
    are read, as TF Serving reads them."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass  # NaN or Infinity, which orjson refuses; or a document to refuse
    try:
        text = body.decode("utf-8")
        if _HUGE_NUMBER.search(body):
            document = json.loads(text, parse_float=_finite_float, parse_int=_double_sized_int)
        else:
            document = json.loads(text)  # accepts NaN, Infinity, -Infinity
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise BadRequest(f"malformed JSON: {exc}") from None
    if _SURROGATE_ESCAPE.search(body):
        _refuse_lone_surrogates(document)
    return document


# What the slow path must look at closer: a number with an exponent of three digits or 300
# digits (maybe beyond a double), and \uD800-\uDFFF escapes (maybe unpaired). orjson refuses
# both itself; the standard library would give infinity and unencodable strings.
_HUGE_NUMBER = re.compile(rb"[eE][+-]?0*[1-9][0-9]{2}|[0-9]{300}")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:24]} is too large for a double")
    return value


def _double_sized_int(text: str) -> int:
    value = int(text)
    if abs(value) > sys.float_info.max:
        raise ValueError(f"number {text[:24]}... is too large for a double")
    return value


def _refuse_lone_surrogates(document: Any) -> None:
    pending = [document]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            pending.extend(value)
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
        elif isinstance(value, str):
            try:
                value.encode()
            except UnicodeEncodeError:
                raise BadRequest("malformed JSON: a string holds a lone surrogate (an unpaired "
                                 "\\ud800-\\udfff escape), which is not valid Unicode") from None


def dumps(document: Any, *, nonfinite: bool = False) -> bytes:
    """Serialize; `nonfinite` keeps NaN/Infinity as literals instead of orjson's `null`."""
    if nonfinite:
        return json.dumps(document, separators=(",", ":"), default=_tolist).encode()
    return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)


def _tolist(value: Any) -> Any:
    if isinstance(value, np.ndarray | np.generic):
        if value.dtype.kind == "f" and value.dtype.itemsize < 8:
            # float32/float16 in their own shortest form (0.1, not 0.10000000149011612) as
            # orjson writes them: numpy's str() is shortest-round-trip for the value's type
            return np.asarray(value).astype(str).astype(np.float64).tolist()
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def has_nonfinite(tensors: Tensors) -> bool:
    for array in tensors.values():
        if (array.dtype.kind == "f" or array.dtype == _BF16) and not _all_finite(array):
            return True
    return False


_BF16 = dtypes.BY_V2["BF16"].numpy
# Up to this many values Python's isfinite over them costs less than numpy's ufunc and reduce.
_FEW_VALUES = 32


def _all_finite(array: np.ndarray) -> bool:
    if array.size <= _FEW_VALUES:
        return all(map(math.isfinite, array.ravel().tolist()))
    return bool(np.isfinite(array).all())
