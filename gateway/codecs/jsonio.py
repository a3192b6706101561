"""JSON bytes in and out: orjson on the fast path, the standard library for NaN and Infinity,
which TF Serving's JSON accepts and writes though strict JSON has no such literals."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import orjson

from gateway import dtypes
from gateway.errors import BadRequest
from gateway.types import Tensors


def loads(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)  # accepts NaN, Infinity, -Infinity
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None


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
    return any((a.dtype.kind == "f" or a.dtype == dtypes.BY_V2["BF16"].numpy)
               and not np.isfinite(a).all() for a in tensors.values())
