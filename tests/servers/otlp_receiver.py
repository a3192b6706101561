"""An OpenTelemetry collector's trace receiver, as a test needs it: the OTLP/gRPC
`TraceService` on 127.0.0.1 (a free port), from the `opentelemetry-proto` package, keeping
every span it is sent; `spans()` flattens them into `ReceivedSpan`s with decoded attributes.
An OTLP/HTTP receiver (`POST /v1/traces`, protobuf) is `http_export_handler`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from aiohttp import web
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

KIND = {trace_pb2.Span.SPAN_KIND_INTERNAL: "internal", trace_pb2.Span.SPAN_KIND_SERVER: "server",
        trace_pb2.Span.SPAN_KIND_CLIENT: "client"}


@dataclass(frozen=True)
class ReceivedLink:
    trace_id: str
    span_id: str
    attributes: dict[str, Any]


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    kind: str  # internal, server, client
    trace_id: str  # hex, as in a traceparent
    span_id: str
    parent_id: str  # "" for a root span
    attributes: dict[str, Any]
    links: tuple[ReceivedLink, ...]
    error: bool  # status ERROR
    resource: dict[str, Any]
    schema_url: str = ""  # the instrumentation scope's: which semantic conventions


def _value(value: common_pb2.AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


def flatten(request: trace_service_pb2.ExportTraceServiceRequest) -> list[ReceivedSpan]:
    found = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                found.append(ReceivedSpan(
                    span.name, KIND.get(span.kind, "other"), span.trace_id.hex(),
                    span.span_id.hex(), span.parent_span_id.hex(), _attributes(span.attributes),
                    tuple(ReceivedLink(link.trace_id.hex(), link.span_id.hex(),
                                       _attributes(link.attributes)) for link in span.links),
                    span.status.code == trace_pb2.Status.STATUS_CODE_ERROR, resource,
                    scope_spans.schema_url))
    return found


class OtlpReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self._server: grpc.aio.Server | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = grpc.aio.server()
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(None)

    async def Export(self, request: trace_service_pb2.ExportTraceServiceRequest,
                     context: grpc.aio.ServicerContext
                     ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self, where: Callable[[ReceivedSpan], bool] = lambda _: True
              ) -> list[ReceivedSpan]:
        return [span for request in self.requests for span in flatten(request) if where(span)]


def http_export_handler(received: list[ReceivedSpan]
                        ) -> Callable[[web.Request], Any]:
    """An aiohttp handler for OTLP/HTTP's `POST /v1/traces` that appends what it gets."""

    async def export(request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        message = trace_service_pb2.ExportTraceServiceRequest.FromString(await request.read())
        received.extend(flatten(message))
        return web.Response(
            body=trace_service_pb2.ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf")

    return export
