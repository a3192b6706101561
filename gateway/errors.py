"""Every failure the gateway reports to a client, with its HTTP status and gRPC code.

Front ends render these errors in their dialect; nothing else turns errors into replies::

    GatewayError                 500  INTERNAL
    ├── BadRequest               400  INVALID_ARGUMENT   bad body, input name/dtype/shape
    ├── Unauthenticated          401  UNAUTHENTICATED
    ├── PermissionDenied         403  PERMISSION_DENIED
    ├── NotFound                 404  NOT_FOUND          unknown model, version, label or path
    ├── MethodNotAllowed         405  UNIMPLEMENTED
    ├── Conflict                 409  ALREADY_EXISTS     creating a model that exists
    ├── PayloadTooLarge          413  RESOURCE_EXHAUSTED
    ├── UnsupportedEncoding      415  INVALID_ARGUMENT   a Content-Encoding we do not inflate
    ├── RateLimited              429  RESOURCE_EXHAUSTED (Retry-After)
    ├── BackendError             502  INTERNAL           the backend failed the request
    ├── Unavailable              503  UNAVAILABLE        (Retry-After)
    │   ├── QueueFull            503  UNAVAILABLE        a batcher queue is at its bound
    │   ├── Overloaded           503  UNAVAILABLE        shed before the body was read
    │   └── ShuttingDown         503  UNAVAILABLE        still in flight when the drain ended
    └── DeadlineExceeded         504  DEADLINE_EXCEEDED
"""

from __future__ import annotations

import logging
import math


class GatewayError(Exception):
    """Base of all client-visible failures; `message` is safe to show to the client.
    `headers` go out with the error (HTTP headers, gRPC trailing metadata). A backend's own
    failure may keep the HTTP `status` and the `kind` (its name for the failure, such as
    TorchServe's exception class) it chose, for a door that speaks its dialect to relay."""

    http_status = 500
    grpc_code = "INTERNAL"

    def __init__(self, message: str, *, retry_after_s: float | None = None,
                 headers: dict[str, str] | None = None, status: int | None = None,
                 kind: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s
        self.headers = dict(headers or {})
        if status is not None:
            self.http_status = status
        self.kind = kind

    def reply_headers(self) -> dict[str, str]:
        headers = dict(self.headers)
        if self.retry_after_s:
            headers["Retry-After"] = str(math.ceil(self.retry_after_s))
        return headers


class BadRequest(GatewayError):
    http_status = 400
    grpc_code = "INVALID_ARGUMENT"


class Unauthenticated(GatewayError):
    http_status = 401
    grpc_code = "UNAUTHENTICATED"


class PermissionDenied(GatewayError):
    http_status = 403
    grpc_code = "PERMISSION_DENIED"


class NotFound(GatewayError):
    http_status = 404
    grpc_code = "NOT_FOUND"


class MethodNotAllowed(GatewayError):
    http_status = 405
    grpc_code = "UNIMPLEMENTED"


class Conflict(GatewayError):
    http_status = 409
    grpc_code = "ALREADY_EXISTS"


class PayloadTooLarge(GatewayError):
    http_status = 413
    grpc_code = "RESOURCE_EXHAUSTED"


class UnsupportedEncoding(GatewayError):
    http_status = 415
    grpc_code = "INVALID_ARGUMENT"


class RateLimited(GatewayError):
    http_status = 429
    grpc_code = "RESOURCE_EXHAUSTED"


class BackendError(GatewayError):
    http_status = 502
    grpc_code = "INTERNAL"


class Unavailable(GatewayError):
    http_status = 503
    grpc_code = "UNAVAILABLE"


class QueueFull(Unavailable):
    pass


class Overloaded(Unavailable):
    pass


class ShuttingDown(Unavailable):
    pass


class DeadlineExceeded(GatewayError):
    http_status = 504
    grpc_code = "DEADLINE_EXCEEDED"


def log_level(error: GatewayError) -> int:
    """How loud a front door logs `error`: server-side failures warn, the client's mistakes are
    info; sheds are counted, not logged one by one (under overload they come by the thousand),
    and so are the requests a drain cuts short (the shutdown logs how many)."""
    if isinstance(error, Overloaded | ShuttingDown):
        return logging.DEBUG
    return logging.WARNING if error.http_status >= 500 else logging.INFO


_FROM_BACKEND_CODE: dict[str, type[GatewayError]] = {
    "INVALID_ARGUMENT": BadRequest,
    "FAILED_PRECONDITION": BadRequest,
    "OUT_OF_RANGE": BadRequest,
    "NOT_FOUND": NotFound,
    "UNAVAILABLE": Unavailable,
    "RESOURCE_EXHAUSTED": Unavailable,
    "DEADLINE_EXCEEDED": DeadlineExceeded,
}


def from_backend_code(code: str, message: str) -> GatewayError:
    """A backend's gRPC failure as ours: the caller's mistakes keep their class, the backend's
    own (auth, internal) become 502, since the caller cannot fix them."""
    error = _FROM_BACKEND_CODE.get(code, BackendError)(message)
    if isinstance(error, Unavailable):
        error.retry_after_s = 1
    return error
