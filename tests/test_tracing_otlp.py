"""The gateway's OTLP encoder (`gateway.telemetry.otlp`) encodes spans exactly as the SDK's
exporter does, attribute cache or not."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.status import Status, StatusCode

from gateway.telemetry import otlp


def spans_of_every_shape() -> tuple[ReadableSpan, ...]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "edge"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("gateway", "1.2.3", schema_url="https://example.com/schema")
    caller = SpanContext(0xABC, 0xDEF, True, TraceFlags(1),
                         trace.TraceState([("vendor", "value")]))
    for status in (200, 503):
        server = tracer.start_span("POST /v2/models/{model}/infer", kind=SpanKind.SERVER,
                                   context=trace.set_span_in_context(NonRecordingSpan(caller)),
                                   attributes={"http.request.method": "POST", "ok": True,
                                               "server.port": 8080, "ratio": 0.5,
                                               "tags": ("a", "b"), "flags": (True, False)})
        server.set_attribute("http.response.status_code", status)
        with trace.use_span(server):
            client = tracer.start_span("svc/Call", kind=SpanKind.CLIENT)
            client.record_exception(ValueError("bad"))
            client.set_status(Status(StatusCode.ERROR, "it broke"))
            client.end()
        server.end()
    batch = tracer.start_span("batch demo/1", links=[Link(server.get_span_context(), {
        "gateway.batch.rows": 2, "gateway.batch.queue_wait_s": 0.001})])
    batch.end()
    return exporter.get_finished_spans()


def test_spans_encode_as_the_sdk_encodes_them_again_and_again() -> None:
    spans = spans_of_every_shape()
    encoder = otlp.Encoder()
    first = encoder.request(spans)
    assert first == encode_spans(spans)
    # The second time every attribute comes from the cache; changing what was sent changes
    # nothing cached.
    [server, *_] = [span for span in first.resource_spans[0].scope_spans[0].spans
                    if span.kind == span.SPAN_KIND_SERVER]
    assert server.attributes[0].key == "http.request.method"
    server.attributes[0].value.string_value = "GET"
    assert encoder.request(spans) == encode_spans(spans)


def test_the_cache_is_bounded_and_tells_true_from_one() -> None:
    encoder = otlp.Encoder()
    for n in range(otlp.CACHED_ATTRIBUTES * 2):
        encoder.attributes({"gateway.request_id": f"{n:016x}"})
    assert len(encoder._attributes) <= otlp.CACHED_ATTRIBUTES + 1
    one, true = encoder.attributes({"x": 1}), encoder.attributes({"x": True})
    assert (one[0].value.int_value, true[0].value.bool_value) == (1, True)
    assert one[0].value.WhichOneof("value") == "int_value"
