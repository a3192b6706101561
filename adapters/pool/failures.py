"""Which failures are the endpoint's (they count towards ejecting it and fail a health probe)
and which are the request's, and what a client is told when an endpoint was not reached: that
the backend is unavailable, never its name, its address or gRPC's transport text (those go to
the log)."""

from __future__ import annotations

import re
from collections.abc import Callable

import grpc

from gateway.errors import BackendError, GatewayError, Unavailable, from_backend_code


class Unreachable(Unavailable):
    """The endpoint was not reached (refused, reset, no route). Its message is for the log:
    the balancer tells the client only that the backend is unavailable."""


#: What a client is told when no endpoint of a backend could be reached.
UNAVAILABLE = "the model's backend is unavailable"


def for_client(error: GatewayError) -> GatewayError:
    """What the client is told of `error`: for an endpoint not reached, only that the backend
    is unavailable."""
    if isinstance(error, Unreachable):
        return Unavailable(UNAVAILABLE, retry_after_s=error.retry_after_s)
    return error


def counts_against_endpoint(error: BaseException) -> bool:
    """Gateway-side failures, Envoy's 5xx: the backend unavailable or failing (502, 503, or
    the 5xx a backend chose). A client's 4xx was answered (a handler's own 4xx too); a 504 is
    the caller's deadline, which a slow model misses on every endpoint alike (an endpoint that
    never answers fails its health checks instead)."""
    return isinstance(error, Unavailable) or (isinstance(error, BackendError)
                                              and error.http_status >= 500)


#: What gRPC core says when the connection, not the server, failed (grpc/src/core).
_TRANSPORT = re.compile(
    r"failed to connect to all addresses|Socket closed|Connection reset|Connection refused|"
    r"Broken pipe|GOAWAY|Stream removed|Endpoint read failed|Transport closed|"
    r"keepalive watchdog|DNS resolution failed|ipv[46]:|unix:", re.IGNORECASE)


def grpc_unreachable(error: grpc.aio.AioRpcError) -> bool:
    return error.code() == grpc.StatusCode.UNAVAILABLE and bool(
        _TRANSPORT.search(error.details() or ""))


#: A backend's gRPC failure as ours, given the failure and the words to put before its text.
ErrorMapper = Callable[[grpc.aio.AioRpcError, str], GatewayError]


def by_status_code(error: grpc.aio.AioRpcError, where: str) -> GatewayError:
    """The mapping for servers whose status codes mean what they say (TF Serving, v2): the
    caller's mistakes keep their class; UNAVAILABLE (and RESOURCE_EXHAUSTED) become
    `Unavailable`, so the pool tries another endpoint, since the call did not run."""
    return from_backend_code(error.code().name,
                             f"{where}: {error.details() or error.code().name}")


def from_grpc(error: grpc.aio.AioRpcError, mapper: ErrorMapper, where: str) -> GatewayError:
    """The kind's reading of `error`, unless gRPC itself failed to reach the endpoint: then
    `Unreachable` with gRPC's text, for the log."""
    if grpc_unreachable(error):
        return Unreachable(error.details() or "UNAVAILABLE", retry_after_s=1)
    return mapper(error, where)
