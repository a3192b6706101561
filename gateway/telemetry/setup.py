"""Builds the gateway's tracing from `TracingConfig`: resource, sampler, exporters.

One per `Gateway`, never the process-global tracer provider, so several gateways in one
process (tests) each export where their own config says. Requests are traced by the
gateway's own `RequestTracer` (`recorder`: cheap spans, the keep-or-drop decision when the
request ends); the SDK's span processors and exporters take the kept spans. Code on the
request path finds the tracer through `spans`, which the front doors bind per request.
"""

from __future__ import annotations

import asyncio

from opentelemetry.sdk.resources import (
    SERVICE_NAME,
    SERVICE_VERSION,
    OTELResourceDetector,
    Resource,
)
from opentelemetry.sdk.trace import SynchronousMultiSpanProcessor
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

import gateway
from gateway.telemetry.config import TracingConfig
from gateway.telemetry.recorder import HeadSampler, RequestTracer, Sink

#: The semantic conventions the gateway's spans follow (docs/observability.md), as the schema
#: every span's instrumentation scope names, so a backend can tell which attribute names mean.
SCHEMA_URL = "https://opentelemetry.io/schemas/1.44.0"


class Tracing:
    def __init__(self, tracer: RequestTracer, processor: SynchronousMultiSpanProcessor,
                 resource: Resource) -> None:
        self.tracer = tracer
        self.resource = resource
        self._processor = processor

    async def close(self) -> None:
        """Export what is queued, then stop. Off the event loop: the exporter blocks, and the
        collector it waits on may be served by this very loop (the tests' is)."""
        await asyncio.to_thread(self._processor.shutdown)


class _ConstantResource(Resource):
    """The SDK's OTLP encoder hashes each span's resource twice, and a resource's hash is a
    JSON dump of its attributes (~10 µs, as much as the rest of a span's encoding): the
    gateway's never changes, so its hash is taken once."""

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource.attributes, resource.schema_url)
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash


def build_tracing(config: TracingConfig) -> Tracing | None:
    """None when tracing is off: then nothing on the request path makes or propagates spans."""
    if not config.enabled:
        return None
    # OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME win over the configured name and version.
    attributes = {SERVICE_NAME: config.service_name, SERVICE_VERSION: gateway.__version__,
                  **OTELResourceDetector().detect().attributes}
    resource = _ConstantResource(Resource.create(attributes))
    processor = SynchronousMultiSpanProcessor()  # type: ignore[no-untyped-call]
    for name in config.exporters:
        if name == "console":  # development: each span printed as it is kept
            processor.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        else:  # OTEL_BSP_* tune the batches
            processor.add_span_processor(BatchSpanProcessor(_otlp_exporter(config)))
    sink = Sink(processor, resource,
                InstrumentationScope("gateway", gateway.__version__, SCHEMA_URL))
    tracer = RequestTracer(sink, HeadSampler(config.sampler, config.sampler_arg),
                           steps=config.detail == "steps", keep_errors=config.keep_errors,
                           slow_ms=config.slow_ms)
    return Tracing(tracer, processor, resource)


def _otlp_exporter(config: TracingConfig) -> SpanExporter:
    # Imported only when used: each pulls in its transport (grpc, requests).
    if config.protocol == "grpc":
        from gateway.telemetry.otlp import GrpcExporter
        return GrpcExporter(config.endpoint)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )
    return HttpExporter(endpoint=config.endpoint)
