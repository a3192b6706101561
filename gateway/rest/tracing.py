"""The REST server span: one per request, continuing the caller's `traceparent`, named and
attributed per the HTTP semantic conventions (docs/observability.md says which version):
`METHOD route`, the route as the dialect names it (`/v1/models/{model}:predict`, not aiohttp's
catch-all `/v1/models/{tail}`), set only on a span that is exported (`spans.when_kept`), so a
request that is not kept costs no attribute work. Around `gateway.rest.errors.answered`, so it
sees the status every reply goes out with, and the error log and access line see the trace.

Not opentelemetry-instrumentation-aiohttp-server: its middleware reads module globals that only
its instrumentor sets (by replacing `web.Application` process-wide, on the global tracer
provider), it records OpenTelemetry metrics we keep in Prometheus, and it names every TF Serving
path by aiohttp's catch-all route. The app wraps its routes in it only when tracing is on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web
from opentelemetry.trace import Span, SpanKind, Tracer
from opentelemetry.trace.status import Status, StatusCode
from opentelemetry.util.types import AttributeValue

from gateway.rest import tfserving
from gateway.rest.common import PROBE_PATHS
from gateway.telemetry import propagation, spans

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: The last route, for paths no other takes (`gateway.rest.server`): no `http.route`
UNROUTED = "/{unrouted}"
#: RFC 9110's methods, PATCH and QUERY: any other is `_OTHER` (no route takes one anyway)
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS",
                           "TRACE", "PATCH", "QUERY"})
#: query parameters whose values are signatures or credentials (semconv `url.query`)
SECRET_QUERY_KEYS = ("X-Amz-Signature", "X-Amz-Credential", "X-Amz-Security-Token", "sig",
                     "X-Goog-Signature")


def server_spans(handler: Handler, tracer: Tracer,
                 untraced: frozenset[str] = PROBE_PATHS) -> Handler:
    """`handler` in a server span; `untraced`: paths that get none (probes and scrapes, unless
    `[server] log_probes`)."""

    async def server_span(request: web.Request) -> web.StreamResponse:
        if request.path in untraced:
            return await handler(request)
        span = tracer.start_span(request.method, context=propagation.extract(request.headers),
                                 kind=SpanKind.SERVER)
        spans.when_kept(span, lambda kept: describe(kept, request))
        token = spans.bind(tracer)
        try:
            with spans.Scope(span, current=True):
                response = await handler(request)
                span.set_attribute("http.response.status_code", response.status)
                if response.status >= 500:  # a 4xx is the client's failure, not the server's
                    span.set_attribute("error.type", str(response.status))
                    span.set_status(Status(StatusCode.ERROR))
                return response
        finally:
            spans.unbind(token)

    return server_span


def describe(span: Span, request: web.Request) -> None:
    """Names and attributes a kept server span (`METHOD route`), once, as it is exported."""
    attributes = request_attributes(request)
    method = "HTTP" if attributes["http.request.method"] == "_OTHER" else request.method
    route = attributes.get("http.route")
    span.update_name(f"{method} {route}" if route else method)
    span.set_attributes(attributes)


def request_attributes(request: web.Request) -> dict[str, AttributeValue]:
    """The HTTP server span's attributes known when the request arrives."""
    attributes: dict[str, AttributeValue] = {
        "http.request.method": request.method if request.method in KNOWN_METHODS else "_OTHER",
        "url.path": request.path, "url.scheme": request.scheme,
        "network.protocol.version": f"{request.version.major}.{request.version.minor}",
        **server_address(request), "client.address": client_address(request)}
    if request.method not in KNOWN_METHODS:
        attributes["http.request.method_original"] = request.method
    route = http_route(request)
    if route:
        attributes["http.route"] = route
    if request.query_string:
        attributes["url.query"] = redacted(request.query_string)
    user_agent = request.headers.get(hdrs.USER_AGENT)
    if user_agent:
        attributes["user_agent.original"] = user_agent
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if isinstance(peer, tuple):  # TCP; a Unix socket's peer has no name
        attributes["network.peer.address"], attributes["network.peer.port"] = peer[:2]
    return attributes


def http_route(request: web.Request) -> str | None:
    """The matched route's template; None when no route matched (an unknown path)."""
    resource = request.match_info.route.resource
    if resource is None or resource.canonical == UNROUTED:
        return None
    if resource.canonical == tfserving.CATCH_ALL:
        return tfserving.route_template(request.match_info["tail"])
    return resource.canonical


def server_address(request: web.Request) -> dict[str, AttributeValue]:
    """`server.address` and `server.port` as the client addressed the gateway: the host a proxy
    passed on (`Forwarded`, `X-Forwarded-Host`), else `Host`; its port, else the scheme's."""
    forwarded = request.forwarded[0].get("host") if request.forwarded else None
    host = (forwarded or request.headers.get("X-Forwarded-Host", "").split(",")[0].strip()
            or request.headers.get(hdrs.HOST, ""))
    if not host:
        return {}
    address, _, port = host.rpartition(":") if not host.endswith("]") else ("", "", "")
    if not port.isdigit():  # no port, or an IPv6 address without one
        address, port = host, ("443" if request.scheme == "https" else "80")
    return {"server.address": address.strip("[]"), "server.port": int(port)}


def client_address(request: web.Request) -> str:
    """The original client behind any proxies (`Forwarded`, `X-Forwarded-For`), else the
    peer's address; without a port (`Forwarded: for="[2001:db8::17]:4711"` may have one)."""
    forwarded = request.forwarded[0].get("for") if request.forwarded else None
    chain = request.headers.get("X-Forwarded-For", "").split(",")[0].strip()
    address = forwarded or chain or request.remote or ""
    if address.startswith("["):
        return address[1:].partition("]")[0]
    return address.partition(":")[0] if address.count(":") == 1 else address


def redacted(query: str) -> str:
    """The query with the values semconv names as secrets replaced by REDACTED."""
    if not any(key in query for key in SECRET_QUERY_KEYS):
        return query
    pairs = (pair.partition("=") for pair in query.split("&"))
    return "&".join(f"{key}=REDACTED" if key in SECRET_QUERY_KEYS and eq else key + eq + value
                    for key, eq, value in pairs)
