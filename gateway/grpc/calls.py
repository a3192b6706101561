"""What every gRPC servicer shares: the call's context (metadata, deadline) and turning
failures into status codes with a readable message, counted like REST's."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from gateway.config import ServerConfig
from gateway.errors import GatewayError
from gateway.metrics import GatewayMetrics
from gateway.types import RequestContext

T = TypeVar("T")
log = logging.getLogger("gateway.errors")


class GrpcCalls:
    def __init__(self, config: ServerConfig, metrics: GatewayMetrics) -> None:
        self._timeout_s = config.request_timeout_ms / 1000.0
        self._metrics = metrics

    def context_of(self, context: grpc.aio.ServicerContext, frontend: str) -> RequestContext:
        """The client's deadline becomes the request's (never beyond the configured one)."""
        remaining = context.time_remaining()
        timeout = self._timeout_s if remaining is None else min(self._timeout_s, remaining)
        headers = {key: value for key, value in (context.invocation_metadata() or ())
                   if isinstance(value, str)}
        return RequestContext(frontend=frontend, headers=headers,
                              deadline=time.monotonic() + timeout)

    async def run(self, context: grpc.aio.ServicerContext, frontend: str, model: str,
                  call: Callable[[RequestContext], Awaitable[T]]) -> T:
        started = time.perf_counter()
        call_context = self.context_of(context, frontend)
        try:
            result = await call(call_context)
        except GatewayError as exc:
            error, code, message = type(exc).__name__, exc.grpc_code, exc.message
            trailing = _metadata({**call_context.reply_headers, **exc.reply_headers()})
            log.log(logging.WARNING if exc.http_status >= 500 else logging.INFO,
                    "gRPC %s -> %s %s: %s", frontend, code, error, message)
        except Exception:
            log.exception("gRPC %s -> INTERNAL: unhandled error", frontend)
            error, code, message, trailing = ("InternalError", "INTERNAL",
                                              "internal error (logged by the gateway)", ())
        else:
            self._record(frontend, model, "OK", started, "")
            if call_context.reply_headers:
                context.set_trailing_metadata(_metadata(call_context.reply_headers))
            return result
        self._record(frontend, model, code, started, error)
        await context.abort(grpc.StatusCode[code], message, trailing_metadata=trailing)
        raise AssertionError("abort returns only by raising")

    def _record(self, frontend: str, model: str, code: str, started: float, error: str) -> None:
        self._metrics.requests.labels(frontend, model, code).inc()
        self._metrics.latency.labels(frontend, model).observe(time.perf_counter() - started)
        if error:
            self._metrics.errors.labels(frontend, code, error).inc()


def _metadata(headers: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """gRPC metadata keys are lower case."""
    return tuple((key.lower(), value) for key, value in headers.items())
