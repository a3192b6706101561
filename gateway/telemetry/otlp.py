"""OTLP/gRPC export of the kept spans, encoded as the SDK's exporter encodes them but with
each attribute (key and value) built as a protobuf message once and reused.

The SDK's encoder builds a `KeyValue` and an `AnyValue` per attribute of every span: ~70% of
its time, and the largest single cost of a kept span (tens of µs for the server span's dozen
attributes, in the exporter's thread on the gateway's core). Most of those pairs repeat from
request to request (the method, route, scheme, addresses, status, user agent), so a bounded
cache of the built messages makes most of a span's attributes a copy. The rest of the message
is what `opentelemetry.exporter.otlp.proto.common.trace_encoder.encode_spans` makes
(tests/test_tracing_sampler.py checks that they encode alike).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final, cast

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope as ScopeMessage
from opentelemetry.proto.resource.v1.resource_pb2 import Resource as ResourceMessage
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, SpanFlags, Status
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanMessage
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind

_KINDS: Final = {SpanKind.INTERNAL: SpanMessage.SPAN_KIND_INTERNAL,
                 SpanKind.SERVER: SpanMessage.SPAN_KIND_SERVER,
                 SpanKind.CLIENT: SpanMessage.SPAN_KIND_CLIENT,
                 SpanKind.PRODUCER: SpanMessage.SPAN_KIND_PRODUCER,
                 SpanKind.CONSUMER: SpanMessage.SPAN_KIND_CONSUMER}
_LOCAL: Final = SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
_REMOTE: Final = _LOCAL | SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
#: built attributes kept; past this the cache starts over (a value unique per request, like
#: the request id, would otherwise grow it without bound)
CACHED_ATTRIBUTES = 4096


class Encoder:
    def __init__(self) -> None:
        self._attributes: dict[tuple[str, type, Any], KeyValue] = {}

    def request(self, spans: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
        groups: dict[Resource, dict[InstrumentationScope | None, list[SpanMessage]]] = {}
        for span in spans:
            scopes = groups.setdefault(span.resource, {})
            scopes.setdefault(span.instrumentation_scope, []).append(self._span(span))
        return ExportTraceServiceRequest(resource_spans=[
            ResourceSpans(resource=ResourceMessage(attributes=self.attributes(resource.attributes)),
                          scope_spans=[ScopeSpans(scope=self._scope(scope), spans=messages,
                                                  schema_url=_schema(scope))
                                       for scope, messages in scopes.items()],
                          schema_url=resource.schema_url)
            for resource, scopes in groups.items()])

    def _scope(self, scope: InstrumentationScope | None) -> ScopeMessage:
        if scope is None:
            return ScopeMessage()
        return ScopeMessage(name=scope.name, version=scope.version or "",
                            attributes=self.attributes(scope.attributes))

    def _span(self, span: ReadableSpan) -> SpanMessage:
        context = span.context
        assert context is not None  # a finished span's
        parent = span.parent
        return SpanMessage(
            trace_id=context.trace_id.to_bytes(16, "big"),
            span_id=context.span_id.to_bytes(8, "big"),
            trace_state=",".join(f"{k}={v}" for k, v in context.trace_state.items()),
            parent_span_id=parent.span_id.to_bytes(8, "big") if parent is not None else b"",
            name=span.name, kind=_KINDS[span.kind],
            start_time_unix_nano=span.start_time or 0, end_time_unix_nano=span.end_time or 0,
            attributes=self.attributes(span.attributes),
            events=[SpanMessage.Event(name=event.name, time_unix_nano=event.timestamp,
                                      attributes=self.attributes(event.attributes))
                    for event in span.events],
            links=[SpanMessage.Link(trace_id=link.context.trace_id.to_bytes(16, "big"),
                                    span_id=link.context.span_id.to_bytes(8, "big"),
                                    attributes=self.attributes(link.attributes),
                                    flags=_flags(link.context))
                   for link in span.links],
            status=Status(code=cast("Status.StatusCode.ValueType", span.status.status_code.value),
                          message=span.status.description or ""),
            flags=_flags(parent))

    def attributes(self, attributes: Mapping[str, Any] | None) -> list[KeyValue]:
        if not attributes:
            return []
        cache = self._attributes
        if len(cache) > CACHED_ATTRIBUTES:
            cache.clear()
        built = []
        for key, value in attributes.items():
            # the type too: True == 1 and 1 == 1.0, but they encode differently
            entry = (key, type(value), value if not isinstance(value, list) else tuple(value))
            pair = cache.get(entry)
            if pair is None:
                pair = cache[entry] = KeyValue(key=key, value=_value(value))
            built.append(pair)
        return built


def _value(value: Any) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, str):
        return AnyValue(string_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, bytes):
        return AnyValue(bytes_value=value)
    if isinstance(value, Sequence):
        return AnyValue(array_value=ArrayValue(values=[_value(v) for v in value]))
    return AnyValue()


def _schema(scope: InstrumentationScope | None) -> str:
    return (scope.schema_url or "") if scope is not None else ""


def _flags(parent: SpanContext | None) -> int:
    return _REMOTE if parent is not None and parent.is_remote else _LOCAL


class GrpcExporter(OTLPSpanExporter):
    """The SDK's OTLP/gRPC span exporter (channel, retries, OTEL_EXPORTER_OTLP_* settings),
    encoding with `Encoder`. Only its exporter thread calls `_translate_data`."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(endpoint=endpoint)
        self._encoder = Encoder()

    def _translate_data(self, data: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
        return self._encoder.request(data)
