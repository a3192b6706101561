"""JSON bytes in and out: orjson on the fast path, the standard library for NaN and Infinity,
which TF Serving's JSON accepts and writes though strict JSON has no such literals."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import orjson

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
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def has_nonfinite(tensors: Tensors) -> bool:
    return any(a.dtype.kind == "f" and not np.isfinite(a).all() for a in tensors.values())
