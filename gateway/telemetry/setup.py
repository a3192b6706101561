"""Builds the gateway's tracer provider from `TracingConfig`: resource, sampler, exporters.

One provider per `Gateway`, never the process-global one, so several gateways in one process
(tests) each export where their own config says. Code on the request path finds the tracer
through `spans`, which the front doors bind per request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from opentelemetry.sdk.resources import (
    SERVICE_NAME,
    SERVICE_VERSION,
    OTELResourceDetector,
    Resource,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import Tracer

import gateway
from gateway.telemetry.config import TracingConfig

_SAMPLERS: dict[str, Callable[[float], Sampler]] = {
    "always_on": lambda _: ALWAYS_ON,
    "always_off": lambda _: ALWAYS_OFF,
    "traceidratio": TraceIdRatioBased,
    "parentbased_always_on": lambda _: ParentBased(ALWAYS_ON),
    "parentbased_always_off": lambda _: ParentBased(ALWAYS_OFF),
    "parentbased_traceidratio": lambda ratio: ParentBased(TraceIdRatioBased(ratio)),
}


#: The semantic conventions the gateway's spans follow (docs/observability.md), as the schema
#: every span's instrumentation scope names, so a backend can tell which attribute names mean.
SCHEMA_URL = "https://opentelemetry.io/schemas/1.44.0"


class Tracing:
    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer: Tracer = provider.get_tracer("gateway", gateway.__version__,
                                                  schema_url=SCHEMA_URL)

    async def close(self) -> None:
        """Export what is queued, then stop. Off the event loop: the exporter blocks, and the
        collector it waits on may be served by this very loop (the tests' is)."""
        await asyncio.to_thread(self.provider.shutdown)


def build_tracing(config: TracingConfig) -> Tracing | None:
    """None when tracing is off: then nothing on the request path makes or propagates spans."""
    if not config.enabled:
        return None
    # OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME win over the configured name and version.
    attributes = {SERVICE_NAME: config.service_name, SERVICE_VERSION: gateway.__version__,
                  **OTELResourceDetector().detect().attributes}
    provider = TracerProvider(resource=Resource.create(attributes),
                              sampler=_SAMPLERS[config.sampler](config.sampler_arg),
                              shutdown_on_exit=False)  # Gateway.close flushes it
    for name in config.exporters:
        if name == "console":  # development: each span printed as it ends
            provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        else:  # OTEL_BSP_* tune the batches
            provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(config)))
    return Tracing(provider)


def _otlp_exporter(config: TracingConfig) -> SpanExporter:
    # Imported only when used: each pulls in its transport (grpc, requests).
    if config.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )
        return GrpcExporter(endpoint=config.endpoint)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )
    return HttpExporter(endpoint=config.endpoint)
