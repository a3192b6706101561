"""TorchServe's failures as ours. TorchServe says what went wrong in its exception class more
than in its status: over gRPC an unknown model is INTERNAL and a handler that raised is
UNAVAILABLE, with the Java class on the last line of the details; over REST the body is
`{"code", "type", "message"}`. So the class decides, and the status only where it says nothing:

    ModelNotFoundException, ModelVersionNotFoundException     → NotFound     404
    "... has no worker to serve ..." (no worker, queue full)   → Unavailable  503, retried
    InternalServerException (the worker's, i.e. the handler's) → BackendError 502, its message,
                                                                  unless the handler chose 4xx
    no answer at all (refused, reset, timed out)               → Unavailable 503 / 504
"""

from __future__ import annotations

from collections.abc import Callable

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
    from_backend_code,
)

_MISSING = ("ModelNotFoundException", "ModelVersionNotFoundException")
_REFUSED = "has no worker to serve"
_WORKER = "InternalServerException"
_BY_HTTP_STATUS: dict[int, type[GatewayError]] = {
    400: BadRequest, 404: NotFound, 413: PayloadTooLarge, 429: Unavailable, 503: Unavailable,
    504: DeadlineExceeded}


def from_grpc(error: grpc.aio.AioRpcError, where: str) -> GatewayError:
    details = error.details() or error.code().name
    message, _, kind = details.rpartition("\n")
    if not message:  # no class line: gRPC's own failure (connect, deadline)
        if error.code() == grpc.StatusCode.UNAVAILABLE:
            return Unavailable(f"{where} is unreachable: {details}", retry_after_s=1)
        message, kind = details, ""
    return _classify(kind.rpartition(".")[2], message, where,
                     lambda text: from_backend_code(error.code().name, text))


def from_rest(status: int, body: bytes, where: str) -> GatewayError:
    try:
        document = orjson.loads(body)
        kind, message = str(document["type"]), str(document["message"])
    except (orjson.JSONDecodeError, TypeError, KeyError):
        kind, message = "", body.decode("utf-8", "replace")[:200] or f"HTTP {status}"
    return _classify(kind, message, where,
                     lambda text: _BY_HTTP_STATUS.get(status, BackendError)(text))


def _classify(kind: str, message: str, where: str,
              by_status: Callable[[str], GatewayError]) -> GatewayError:
    text = f"{where}: {message}"
    if kind in _MISSING:
        return NotFound(text)
    if _REFUSED in message:
        return Unavailable(text, retry_after_s=1)
    error = by_status(text)
    if kind == _WORKER and error.http_status >= 500:
        return BackendError(text)  # the handler failed: the caller cannot fix that by waiting
    if isinstance(error, Unavailable):
        error.retry_after_s = 1
    return error
