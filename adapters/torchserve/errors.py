"""TorchServe's failures as ours, keeping the status and exception class TorchServe chose, so
the TorchServe door answers them as TorchServe did (`{"code", "type", "message"}`) and the
other doors with the same status; the message is TorchServe's own, which names no address.
Over gRPC an unknown model is INTERNAL and a handler that raised is UNAVAILABLE, with the Java
class on the last line of the details; over REST the body is `{"code", "type", "message"}`.
The class decides where the status says too little:

    ModelNotFoundException, ModelVersionNotFoundException → NotFound 404
    "... has no worker to serve ..." (no worker, queue full) → Unavailable 503, tried elsewhere
    InternalServerException (the worker's, i.e. the handler's) → its status (REST; gRPC: 4xx
                                                                 → 400, else 503), not retried
"""

from __future__ import annotations

import grpc
import orjson

from gateway.errors import (
    BackendError,
    BadRequest,
    DeadlineExceeded,
    GatewayError,
    NotFound,
    PayloadTooLarge,
    Unavailable,
)

_MISSING = ("ModelNotFoundException", "ModelVersionNotFoundException")
_REFUSED = "has no worker to serve"
_WORKER = "InternalServerException"
_BY_STATUS: dict[int, type[GatewayError]] = {
    404: NotFound, 413: PayloadTooLarge, 429: Unavailable, 503: Unavailable,
    504: DeadlineExceeded}
#: The HTTP status TorchServe's REST API gives the failure its gRPC API reports with this code.
_GRPC_STATUS = {"INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "NOT_FOUND": 404,
                "UNAVAILABLE": 503,
                "DEADLINE_EXCEEDED": 504, "RESOURCE_EXHAUSTED": 413, "INTERNAL": 500}


def from_grpc(error: grpc.aio.AioRpcError, where: str = "") -> GatewayError:
    """`where` is unused: TorchServe's own message names neither backend nor address."""
    details = error.details() or error.code().name
    message, _, kind = details.rpartition("\n")
    if not message:  # no class line: gRPC's own failure (deadline, a reset stream)
        message, kind = details, ""
    return classify(_GRPC_STATUS.get(error.code().name, 500), kind.rpartition(".")[2], message)


def from_rest(status: int, body: bytes) -> GatewayError | None:
    """TorchServe's error body as ours; None when the body is not one (a handler that chose
    its status with `set_response_status` answered it)."""
    try:
        document = orjson.loads(body)
        kind, message = str(document["type"]), str(document["message"])
    except (orjson.JSONDecodeError, TypeError, KeyError):
        return None
    return classify(status, kind, message)


def classify(status: int, kind: str, message: str) -> GatewayError:
    if kind in _MISSING:
        return NotFound(message, status=404, kind=kind)
    if _REFUSED in message:
        return Unavailable(message, retry_after_s=1, status=503, kind=kind)
    if kind == _WORKER and status >= 500:  # the handler failed: waiting will not fix that
        return BackendError(message, status=status, kind=kind)
    cls = _BY_STATUS.get(status, BadRequest if 400 <= status < 500 else BackendError)
    error = cls(message, status=status, kind=kind)
    if isinstance(error, Unavailable):
        error.retry_after_s = 1
    return error
