"""What every gRPC servicer shares: the call's context (metadata, deadline, the principal the
authentication interceptor verified) and turning failures into status codes with a readable
message, recorded like REST's (metrics, access line). The server span comes from the tracing
interceptor (`gateway.grpc.server`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from typing import Any, NoReturn, TypeVar

import grpc
from multidict import CIMultiDict, CIMultiDictProxy
from opentelemetry.trace import Tracer

from gateway.admission import InflightLimits
from gateway.codecs.budget import DecodeBudget
from gateway.config import ServerConfig
from gateway.errors import GatewayError, log_level
from gateway.telemetry import spans
from gateway.telemetry.requests import RequestRecorder
from gateway.types import Principal, RequestContext

T = TypeVar("T")
log = logging.getLogger("gateway.errors")

#: A unary-unary servicer method, as grpc.aio calls it.
UnaryBehavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]

#: The principal `Authentication` (gateway.grpc.authentication) verified from the call's
#: metadata, set around the servicer method it lets through.
_VERIFIED: ContextVar[Principal | None] = ContextVar("gateway_grpc_principal", default=None)


def as_principal(principal: Principal, behavior: UnaryBehavior) -> UnaryBehavior:
    """`behavior`, run as `principal`: its calls' contexts start authenticated."""
    async def verified(request: Any, context: grpc.aio.ServicerContext) -> Any:
        token = _VERIFIED.set(principal)
        try:
            return await behavior(request, context)
        finally:
            _VERIFIED.reset(token)
    return verified


def headers_of(metadata: Iterable[tuple[str, str | bytes]] | None) -> CIMultiDictProxy[str]:
    """The text metadata as headers, as REST has them: a repeated key stays repeated (a second
    `authorization` is refused, not silently taken), `-bin` values are left out."""
    return CIMultiDictProxy(CIMultiDict(
        (key, value) for key, value in metadata or () if isinstance(value, str)))


class GrpcCalls:
    def __init__(self, config: ServerConfig, recorder: RequestRecorder,
                 tracer: Tracer | None, inflight: InflightLimits) -> None:
        self._timeout_s = config.request_timeout_ms / 1000.0
        self._inflight = inflight
        self._recorder = recorder
        self._tracer = tracer
        self._budget = config.decode

    @property
    def budget(self) -> DecodeBudget:
        """What the servicers' decoders may build for one request (`[server.decode]`)."""
        return self._budget

    def context_of(self, context: grpc.aio.ServicerContext, frontend: str) -> RequestContext:
        return self.context_from(context.invocation_metadata(), context.time_remaining(),
                                 frontend)

    def context_from(self, metadata: Iterable[tuple[str, str | bytes]] | None,
                     remaining: float | None, frontend: str) -> RequestContext:
        """The client's deadline becomes the request's (never beyond the configured one)."""
        timeout = self._timeout_s if remaining is None else min(self._timeout_s, remaining)
        call = RequestContext(frontend=frontend, headers=headers_of(metadata),
                              deadline=time.monotonic() + timeout)
        principal = _VERIFIED.get()
        if principal is not None:
            call.principal, call.authenticated = principal, True
        return call

    async def run_infer(self, context: grpc.aio.ServicerContext, frontend: str, model: str,
                        call: Callable[[RequestContext], Awaitable[T]]) -> T:
        """`run` for a call that runs a model: it takes an in-flight slot (as REST's do)
        before its tensors are decoded, or is shed with UNAVAILABLE."""
        return await self.run(context, frontend, model, call, shed=True)

    async def run(self, context: grpc.aio.ServicerContext, frontend: str, model: str,
                  call: Callable[[RequestContext], Awaitable[T]], *, shed: bool = False) -> T:
        if self._tracer is None:
            return await self._run(context, frontend, model, call, shed)
        token = spans.bind(self._tracer)
        try:
            return await self._run(context, frontend, model, call, shed)
        finally:
            spans.unbind(token)

    async def _run(self, context: grpc.aio.ServicerContext, frontend: str, model: str,
                   call: Callable[[RequestContext], Awaitable[T]], shed: bool) -> T:
        started = time.perf_counter()
        call_context = self.context_of(context, frontend)
        try:
            if shed:
                self._inflight.acquire(model)
                try:
                    result = await call(call_context)
                finally:
                    self._inflight.release(model)
            else:
                result = await call(call_context)
        except Exception as exc:
            await self.fail(context, frontend, model, exc, started, call_context)
        self._recorder.finished(frontend, model, "OK", "", time.perf_counter() - started,
                                call_context)
        if call_context.reply_headers:
            context.set_trailing_metadata(_metadata(call_context.reply_headers))
        return result

    async def fail(self, context: grpc.aio.ServicerContext, frontend: str, model: str,
                   exc: Exception, started: float, call_context: RequestContext) -> NoReturn:
        """Ends the call with `exc`'s status (INTERNAL, logged, for one that is not ours) and
        records it; `started` is when the call began (`time.perf_counter()`)."""
        if isinstance(exc, GatewayError):
            error, code, message = type(exc).__name__, exc.grpc_code, exc.message
            trailing = _metadata({**call_context.reply_headers, **exc.reply_headers()})
            log.log(log_level(exc), "gRPC %s -> %s %s: %s", frontend, code, error, message)
        else:
            log.error("gRPC %s -> INTERNAL: unhandled error", frontend, exc_info=exc)
            error, code, message, trailing = ("InternalError", "INTERNAL",
                                              "internal error (logged by the gateway)", ())
        self._recorder.finished(frontend, model, code, error, time.perf_counter() - started,
                                call_context)
        await context.abort(grpc.StatusCode[code], message, trailing_metadata=trailing)
        raise AssertionError("abort returns only by raising")


def _metadata(headers: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """gRPC metadata keys are lower case."""
    return tuple((key.lower(), value) for key, value in headers.items())
