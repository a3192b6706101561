"""TorchServe's failures, as its gRPC and REST APIs report them (texts as TorchServe 0.12 writes
them), turned into the gateway's errors."""

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
    Unavailable,
)

WHERE = "TorchServe backend ts (h:7070)"
NO_WORKER = ('Model "m" has no worker to serve inference request. Please use scale workers API '
             "to add workers.")
WORKER = "org.pytorch.serve.http.InternalServerException"
Code = grpc.StatusCode


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


@pytest.mark.parametrize(("code", "details", "kind", "message"), [
    (Code.INTERNAL, "Model not found: m\norg.pytorch.serve.archive.model.ModelNotFoundException",
     NotFound, "Model not found: m"),
    (Code.INTERNAL, "Model version: 9 does not exist for model: m\n"
                    "org.pytorch.serve.archive.model.ModelVersionNotFoundException",
     NotFound, "Model version: 9 does not exist for model: m"),
    (Code.INTERNAL, f"{NO_WORKER}\nInternalServerException.()", Unavailable, NO_WORKER),
    (Code.UNAVAILABLE, f"Prediction failed\n{WORKER}", BackendError, "Prediction failed"),
    (Code.INTERNAL, f"Worker died.\n{WORKER}", BackendError, "Worker died."),
    (Code.INVALID_ARGUMENT, f"x must be a list\n{WORKER}", BadRequest, "x must be a list"),
    (Code.DEADLINE_EXCEEDED, "Deadline Exceeded", DeadlineExceeded, "Deadline Exceeded"),
])
def test_grpc_failures(code: grpc.StatusCode, details: str, kind: type[GatewayError],
                       message: str) -> None:
    error = errors.from_grpc(rpc_error(code, details), WHERE)
    assert (type(error), error.message) == (kind, f"{WHERE}: {message}")
    assert error.retry_after_s == (1 if kind is Unavailable else None)


def test_grpc_without_an_answer_is_unreachable() -> None:
    details = "failed to connect to all addresses; last error: Connection refused"
    error = errors.from_grpc(rpc_error(Code.UNAVAILABLE, details), WHERE)
    assert (type(error), error.message, error.retry_after_s) == (
        Unavailable, f"{WHERE} is unreachable: {details}", 1)


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
    (400, body(400, "InternalServerException", "x must be a list"), BadRequest,
     "x must be a list"),
    (502, b"<html>Bad Gateway</html>", BackendError, "<html>Bad Gateway</html>"),
    (429, b"", Unavailable, "HTTP 429"),
])
def test_rest_failures(status: int, reply: bytes, kind: type[GatewayError],
                       message: str) -> None:
    error = errors.from_rest(status, reply, WHERE)
    assert (type(error), error.message) == (kind, f"{WHERE}: {message}")
    assert error.retry_after_s == (1 if kind is Unavailable else None)
