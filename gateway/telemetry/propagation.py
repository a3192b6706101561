"""W3C trace context in and out: the caller's `traceparent` continued by the server span, and
a client span per backend call whose `traceparent` goes to the backend. An adapter traces a
call in two lines:

    with propagation.grpc_call("tensorflow.serving.PredictionService", "Predict", address) as out:
        reply = await stub.Predict(request, timeout=seconds, metadata=out.metadata)

(`http_call(method, url)` likewise, with `out.headers` added to the request's headers.)
Only W3C trace context is read and written, whatever OTEL_PROPAGATORS says: it is what
TF Serving, TorchServe and collectors understand, and one propagator costs least. The
request's id goes along as `x-request-id`, traced or not (`request_ids`).
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
from opentelemetry.trace.status import Status, StatusCode
from opentelemetry.util.types import Attributes

from gateway.telemetry import request_ids, spans

_W3C: Final = TraceContextTextMapPropagator()
_TRACEPARENT: Final = "traceparent"
_EMPTY: Final = context.Context()
_GRPC_OK: Final = MappingProxyType({"rpc.response.status_code": "OK"})


def extract(headers: Mapping[str, str]) -> context.Context:
    """The caller's trace context (an empty one when it sent none or a malformed one)."""
    if _TRACEPARENT not in headers:  # most callers: skip the propagator's getter and context
        return _EMPTY
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
        return _untraced()
    if not trace.get_current_span().is_recording():
        return _unsampled()
    host, _, port = address.rpartition(":")
    name = f"{service}/{method}"
    return _client(tracer, name, {
        "rpc.system.name": "grpc", "rpc.method": name, "server.address": host,
        "server.port": int(port)}, succeeded=_GRPC_OK)


def http_call(method: str, url: str) -> AbstractContextManager[Outgoing]:
    """A client span for an HTTP request, per the HTTP conventions; the caller may add
    `http.response.status_code` to `out.span`."""
    tracer = spans.tracer()
    if tracer is None:
        return _untraced()
    if not trace.get_current_span().is_recording():
        return _unsampled()
    parts = urlsplit(url)
    return _client(tracer, method, {
        "http.request.method": method, "url.full": url, "server.address": parts.hostname or "",
        "server.port": parts.port or (443 if parts.scheme == "https" else 80)})


def _headers() -> dict[str, str]:
    request_id = request_ids.current()
    return {request_ids.METADATA_KEY: request_id} if request_id else {}


def _untraced() -> AbstractContextManager[Outgoing]:
    """No span, no trace context: only the request id, if the call is made for a request."""
    request_id = request_ids.current()
    if not request_id:
        return _UNTRACED
    return nullcontext(Outgoing(INVALID_SPAN, {request_ids.METADATA_KEY: request_id}))


def _unsampled() -> AbstractContextManager[Outgoing]:
    """No span (the request is not recorded), but its trace context still reaches the
    backend."""
    headers = _headers()
    _W3C.inject(headers)
    return nullcontext(Outgoing(INVALID_SPAN, headers))


@contextmanager
def _client(tracer: Tracer, name: str, attributes: Attributes,
            succeeded: Attributes = None) -> Iterator[Outgoing]:
    """`succeeded`: attributes the span gets if the block does not raise."""
    span = tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
    try:
        headers = _headers()
        _W3C.inject(headers, context=trace.set_span_in_context(span))
        yield Outgoing(span, headers)
    except grpc.aio.AioRpcError as exc:  # the status code names the error (semconv RPC)
        code = exc.code().name
        span.set_attributes({"rpc.response.status_code": code, "error.type": code})
        span.set_status(Status(StatusCode.ERROR, exc.details()))
        raise
    except BaseException as exc:
        spans.fail(span, exc)
        raise
    else:
        if succeeded:
            span.set_attributes(succeeded)
    finally:
        span.end()
