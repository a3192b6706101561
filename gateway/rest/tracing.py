"""The REST server span: one per request, continuing the caller's `traceparent`, named and
attributed per the HTTP semantic conventions. Outside `errors_and_metrics`, so it sees the
status every reply goes out with, and the error log and access line see the trace.

Not opentelemetry-instrumentation-aiohttp-server: its middleware reads module globals that only
its instrumentor sets (by replacing `web.Application` process-wide, on the global tracer
provider), it records OpenTelemetry metrics we keep in Prometheus, and its releases pin other
OpenTelemetry packages than the gRPC instrumentation's. The app adds this middleware only when
tracing is on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware
from opentelemetry.trace import SpanKind, Tracer
from opentelemetry.trace.status import Status, StatusCode

from gateway.telemetry import propagation, spans

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: Probes and scrapes arrive every few seconds and would bury the requests in traces.
UNTRACED_PATHS = frozenset({"/metrics", "/healthz", "/readyz"})


def server_spans(tracer: Tracer) -> Middleware:
    @web.middleware
    async def server_span(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in UNTRACED_PATHS:
            return await handler(request)
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else ""
        span = tracer.start_span(
            f"{request.method} {route}" if route else request.method,
            context=propagation.extract(request.headers), kind=SpanKind.SERVER,
            attributes={"http.request.method": request.method, "http.route": route,
                        "url.path": request.path, "url.scheme": request.scheme})
        token = spans.bind(tracer)
        try:
            with spans.Scope(span, current=True):
                response = await handler(request)
                span.set_attribute("http.response.status_code", response.status)
                if response.status >= 500:  # a 4xx is the client's failure, not the server's
                    span.set_status(Status(StatusCode.ERROR))
                return response
        finally:
            spans.unbind(token)

    return server_span
