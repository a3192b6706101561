"""The gRPC server span: one per call, continuing the caller's `traceparent` from its metadata,
named and attributed per the RPC semantic conventions (docs/observability.md says which
version). The first interceptor, so a call the authentication interceptor refuses has its
span too. A call with a streamed reply (v2's `ModelStreamInfer`) has no span of its own: each
of its messages is traced as a `ModelInfer`.

Not opentelemetry-instrumentation-grpc's interceptor: its current release (0.66b2) still
emits the conventions from before v1.21 (`net.peer.*`, `rpc.service` beside a short
`rpc.method`, an integer `rpc.grpc.status_code`, a leading slash in the span name) and has no
OTEL_SEMCONV_STABILITY_OPT_IN for RPC; a span processor could add the current attributes but
not remove the old ones. The attributes are set only on a span that is exported
(`spans.when_kept`). The server adds this interceptor only when tracing is on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Tracer
from opentelemetry.trace.status import Status, StatusCode
from opentelemetry.util.types import AttributeValue

from gateway.telemetry import propagation, spans

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]
Behavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
#: Health checks arrive every few seconds and would bury the calls in traces (the v2 dialect's
#: own probes too, as REST's /v2/health/* are untraced); reflection is a tool's, not a client's.
UNTRACED = ("/grpc.health.v1.Health/", "/grpc.reflection.",
            "/inference.GRPCInferenceService/ServerLive",
            "/inference.GRPCInferenceService/ServerReady")
#: The codes that make a server span an error (semconv gRPC); the others are the caller's.
SERVER_ERRORS = frozenset({"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL",
                           "UNAVAILABLE", "DATA_LOSS"})


class ServerSpans(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    def __init__(self, tracer: Tracer, untraced: tuple[str, ...] = UNTRACED) -> None:
        """`untraced`: prefixes of the method paths ("/package.Service/Method") left out."""
        self._tracer = tracer
        self._untraced = untraced

    async def intercept_service(self, continuation: Continuation,
                                details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None or handler.response_streaming or details.method.startswith(
                self._untraced):
            return handler
        method = details.method.lstrip("/")  # "package.Service/Method", as semconv names it
        parent = propagation.extract({key: value for key, value in details.invocation_metadata
                                      or () if isinstance(value, str)})
        if handler.request_streaming:  # the authentication interceptor's refusals
            return grpc.stream_unary_rpc_method_handler(
                self._traced(handler.stream_unary, method, parent),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        return grpc.unary_unary_rpc_method_handler(
            self._traced(handler.unary_unary, method, parent),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)

    def _traced(self, behavior: Behavior, method: str,
                parent: otel_context.Context) -> Behavior:
        async def traced(request: Any, context: grpc.aio.ServicerContext) -> Any:
            span = self._tracer.start_span(method, context=parent, kind=SpanKind.SERVER)
            spans.when_kept(span, lambda kept: kept.set_attributes({
                "rpc.system.name": "grpc", "rpc.method": method,
                **peer_attributes(context.peer())}))
            token = otel_context.attach(trace.set_span_in_context(span))
            failure: BaseException | None = None
            try:
                return await behavior(request, context)
            except BaseException as exc:  # an abort too: its code is in `context`
                failure = exc
                raise
            finally:
                code = status_code(context, failure)
                span.set_attribute("rpc.response.status_code", code)
                if code in SERVER_ERRORS:
                    span.set_attribute("error.type", code)
                    span.set_status(Status(StatusCode.ERROR, context.details() or None))
                otel_context.detach(token)
                span.end()

        return traced


def status_code(context: grpc.aio.ServicerContext, failure: BaseException | None) -> str:
    """The code the call ends with, by name: an abort's, or gRPC's for what escaped."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    if failure is None:
        return "OK"
    return "CANCELLED" if isinstance(failure, asyncio.CancelledError) else "UNKNOWN"


def peer_attributes(peer: str) -> dict[str, AttributeValue]:
    """`network.peer.*` from gRPC's peer string: "ipv4:10.0.0.7:51234",
    "ipv6:%5B::1%5D:51234", "unix:/run/gw.sock"."""
    kind, _, address = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        host, _, port = unquote(address).rpartition(":")
        if port.isdigit():
            return {"network.peer.address": host.strip("[]"), "network.peer.port": int(port)}
    elif kind.startswith("unix"):
        return {"network.peer.address": address}
    return {}
