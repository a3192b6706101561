"""Tensors as TorchServe handlers commonly take and give JSON: one object of named nested lists,
`{"x": [[1, 2, 3, 4]]}`. The gateway writes a handler's input so and reads its reply so; the
TorchServe dialect takes that body (or one unnamed value, for a one-input model) to any other
backend and answers in it. JSON has no dtypes: a body is typed by the target's signature, a
handler's reply by its values (INT64, FP64, BOOL, or BYTES for strings)."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from gateway import dtypes
from gateway.codecs import jsonio
from gateway.codecs.arrays import from_array, to_array
from gateway.codecs.budget import DEFAULT_BUDGET, DecodeBudget
from gateway.codecs.tfserving_json import PredictBody
from gateway.errors import BackendError, BadRequest, PayloadTooLarge
from gateway.types import InputDecoder, ModelMetadata, Tensors

#: The name of a reply's only tensor when the handler returns one unnamed value.
UNNAMED_OUTPUT = "output"
# A handler's reply is sized by its model, not by a client: only nesting numpy cannot hold.
_REPLY_BUDGET = DecodeBudget(max_tensor_elements=1 << 62, max_request_elements=1 << 62,
                             max_batch_rows=1 << 62, max_dims=64)


def encode(tensors: Tensors) -> bytes:
    return jsonio.dumps({name: from_array(array) for name, array in tensors.items()},
                        nonfinite=jsonio.has_nonfinite(tensors))


def body_decoder(body: bytes, *, budget: DecodeBudget = DEFAULT_BUDGET) -> InputDecoder:
    """Types `body` with the signature of a target that needs tensors; parsed only then, and
    checked against `budget` as TF Serving's columnar "inputs" are."""

    def decode(signature: ModelMetadata) -> Tensors:
        # the same shapes as TF Serving's columnar "inputs": an object by name or one value
        return PredictBody(False, jsonio.loads(body), None, budget).decode(signature)

    return decode


def decode_reply(data: bytes) -> Tensors:
    """A handler's reply: an object's members by name, any other JSON as `output`, and bytes
    that are not JSON as one BYTES element."""
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        array = np.empty(1, dtype=object)
        array[0] = data
        return {UNNAMED_OUTPUT: array}
    if isinstance(document, dict) and set(document) != {"b64"}:
        return {name: _tensor(value, name) for name, value in document.items()}
    return {UNNAMED_OUTPUT: _tensor(document, UNNAMED_OUTPUT)}


def _tensor(value: Any, name: str) -> np.ndarray:
    try:
        natural = np.asarray(value)
    except ValueError:
        raise BackendError(f"handler reply {name!r}: ragged nested lists") from None
    if natural.dtype.kind in "iufb":
        return natural
    try:
        return to_array(value, dtypes.BY_V2["BYTES"], name, budget=_REPLY_BUDGET)
    except (BadRequest, PayloadTooLarge) as exc:  # the backend's reply, not the caller's fault
        raise BackendError(f"handler reply is not a tensor: {exc.message}") from None
