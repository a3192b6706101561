"""W3C trace context in and out: the caller's `traceparent` continued by the server span, and
a client span per backend call whose `traceparent` goes to the backend. An adapter traces a
call in two lines:

    with propagation.grpc_call("tensorflow.serving.PredictionService", "Predict", address) as out:
        reply = await stub.Predict(request, timeout=seconds, metadata=out.metadata)

(`http_call(method, url)` likewise, with `out.headers` added to the request's headers.)
Only W3C trace context is read and written, whatever OTEL_PROPAGATORS says: it is what
TF Serving, TorchServe and collectors understand, and one propagator costs least.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final
from urllib.parse import urlsplit

import grpc
from opentelemetry import context, trace
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes

from gateway.telemetry import spans

_W3C: Final = TraceContextTextMapPropagator()


def extract(headers: Mapping[str, str]) -> context.Context:
    """The caller's trace context (an empty one when it sent none or a malformed one)."""
    return _W3C.extract(headers)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A backend call's client span and the headers that carry it to the backend."""

    span: Span  # INVALID_SPAN (ignores attributes) when the request is not traced
    headers: Mapping[str, str]

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The headers as gRPC metadata."""
        return tuple(self.headers.items())


_UNTRACED: Final = nullcontext(Outgoing(INVALID_SPAN, MappingProxyType({})))


def grpc_call(service: str, method: str, address: str) -> AbstractContextManager[Outgoing]:
    """A client span `service/method` to `address` ("host:port"), per the RPC conventions."""
    tracer = spans.tracer()
    if tracer is None:
        return _UNTRACED
    if not trace.get_current_span().is_recording():
        return _unsampled()
    host, _, port = address.rpartition(":")
    return _client(tracer, f"{service}/{method}", {
        "rpc.system": "grpc", "rpc.service": service, "rpc.method": method,
        "server.address": host, "server.port": int(port)})


def http_call(method: str, url: str) -> AbstractContextManager[Outgoing]:
    """A client span for an HTTP request, per the HTTP conventions; the caller may add
    `http.response.status_code` to `out.span`."""
    tracer = spans.tracer()
    if tracer is None:
        return _UNTRACED
    if not trace.get_current_span().is_recording():
        return _unsampled()
    parts = urlsplit(url)
    return _client(tracer, method, {
        "http.request.method": method, "url.full": url, "server.address": parts.hostname or "",
        "server.port": parts.port or (443 if parts.scheme == "https" else 80)})


def _unsampled() -> AbstractContextManager[Outgoing]:
    """No span (the request is not recorded), but its trace context still reaches the
    backend."""
    headers: dict[str, str] = {}
    _W3C.inject(headers)
    return nullcontext(Outgoing(INVALID_SPAN, headers))


@contextmanager
def _client(tracer: Tracer, name: str, attributes: Attributes) -> Iterator[Outgoing]:
    span = tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
    with spans.Scope(span):
        headers: dict[str, str] = {}
        _W3C.inject(headers, context=trace.set_span_in_context(span))
        try:
            yield Outgoing(span, headers)
        except grpc.aio.AioRpcError as exc:
            span.set_attribute("rpc.grpc.status_code", exc.code().value[0])
            raise
