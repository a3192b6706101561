"""TorchServe's failures, as its gRPC and REST APIs report them (texts as TorchServe 0.12 writes
them), turned into the gateway's errors with TorchServe's status, class and message."""

from __future__ import annotations

import grpc
import orjson
import pytest

from adapters.torchserve import errors
from gateway.errors import (
    BackendError,
    BadRequest,
    DeadlineExceeded,
    GatewayError,
    NotFound,
    PayloadTooLarge,
    Unavailable,
)

NO_WORKER = ('Model "m" has no worker to serve inference request. Please use scale workers API '
             "to add workers.")
WORKER = "org.pytorch.serve.http.InternalServerException"
Code = grpc.StatusCode


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


@pytest.mark.parametrize(("code", "details", "kind", "status", "message"), [
    (Code.INTERNAL, "Model not found: m\norg.pytorch.serve.archive.model.ModelNotFoundException",
     NotFound, 404, "Model not found: m"),
    (Code.INTERNAL, "Model version: 9 does not exist for model: m\n"
                    "org.pytorch.serve.archive.model.ModelVersionNotFoundException",
     NotFound, 404, "Model version: 9 does not exist for model: m"),
    (Code.INTERNAL, f"{NO_WORKER}\nInternalServerException.()", Unavailable, 503, NO_WORKER),
    (Code.UNAVAILABLE, f"Prediction failed\n{WORKER}", BackendError, 503, "Prediction failed"),
    (Code.INTERNAL, f"Worker died.\n{WORKER}", BackendError, 500, "Worker died."),
    (Code.INVALID_ARGUMENT, f"x must be a list\n{WORKER}", BadRequest, 400, "x must be a list"),
    (Code.DEADLINE_EXCEEDED, "Deadline Exceeded", DeadlineExceeded, 504, "Deadline Exceeded"),
])
def test_grpc_failures(code: grpc.StatusCode, details: str, kind: type[GatewayError],
                       status: int, message: str) -> None:
    error = errors.from_grpc(rpc_error(code, details), "backend ts")
    assert (type(error), error.http_status, error.message) == (kind, status, message)
    assert error.retry_after_s == (1 if kind is Unavailable else None)


def body(code: int, kind: str, message: str) -> bytes:
    return orjson.dumps({"code": code, "type": kind, "message": message})


@pytest.mark.parametrize(("status", "reply", "kind", "message"), [
    (404, body(404, "ModelNotFoundException", "Model not found: m"), NotFound,
     "Model not found: m"),
    (503, body(503, "ServiceUnavailableException", NO_WORKER), Unavailable, NO_WORKER),
    (503, body(503, "InternalServerException", "Prediction failed"), BackendError,
     "Prediction failed"),
    (507, body(507, "InternalServerException", "Out of resources"), BackendError,
     "Out of resources"),
    (422, body(422, "InternalServerException", "x must be a list"), BadRequest,
     "x must be a list"),
    (413, body(413, "RequestEntityTooLargeException", "too big"), PayloadTooLarge, "too big"),
])
def test_rest_failures_keep_torchserves_status_and_class(
        status: int, reply: bytes, kind: type[GatewayError], message: str) -> None:
    error = errors.from_rest(status, reply)
    assert error is not None
    assert (type(error), error.http_status, error.kind, error.message) == (
        kind, status, orjson.loads(reply)["type"], message)
    assert error.retry_after_s == (1 if kind is Unavailable else None)


@pytest.mark.parametrize("reply", [b"<html>Bad Gateway</html>", b"", b'{"verdict": "no"}'])
def test_a_reply_not_in_torchserves_error_shape_is_the_handlers_own(reply: bytes) -> None:
    assert errors.from_rest(422, reply) is None
