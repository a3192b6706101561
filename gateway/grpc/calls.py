"""What every gRPC servicer shares: the call's context (metadata, deadline) and turning
failures into status codes with a readable message, recorded like REST's (metrics, access
line). The server span comes from the tracing interceptor (`gateway.grpc.server`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
from opentelemetry.trace import Tracer

from gateway.config import ServerConfig
from gateway.errors import GatewayError
from gateway.telemetry import spans
from gateway.telemetry.requests import RequestRecorder
from gateway.types import RequestContext

T = TypeVar("T")
log = logging.getLogger("gateway.errors")


class GrpcCalls:
    def __init__(self, config: ServerConfig, recorder: RequestRecorder,
                 tracer: Tracer | None) -> None:
        self._timeout_s = config.request_timeout_ms / 1000.0
        self._recorder = recorder
        self._tracer = tracer

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
        if self._tracer is None:
            return await self._run(context, frontend, model, call)
        token = spans.bind(self._tracer)
        try:
            return await self._run(context, frontend, model, call)
        finally:
            spans.unbind(token)

    async def _run(self, context: grpc.aio.ServicerContext, frontend: str, model: str,
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
            self._recorder.finished(frontend, model, "OK", "", time.perf_counter() - started,
                                    call_context)
            if call_context.reply_headers:
                context.set_trailing_metadata(_metadata(call_context.reply_headers))
            return result
        self._recorder.finished(frontend, model, code, error, time.perf_counter() - started,
                                call_context)
        await context.abort(grpc.StatusCode[code], message, trailing_metadata=trailing)
        raise AssertionError("abort returns only by raising")


def _metadata(headers: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """gRPC metadata keys are lower case."""
    return tuple((key.lower(), value) for key, value in headers.items())
