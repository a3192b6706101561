"""Assembles the aiohttp application from the dialect route sets."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from aiohttp import hdrs, web

from gateway.admission import InflightLimits
from gateway.config import ServerConfig
from gateway.drain import Drain
from gateway.metrics import GatewayMetrics
from gateway.pipeline import Pipeline
from gateway.rest.common import CONFIG_KEY, INFLIGHT_KEY, PROBE_PATHS, request_id_of
from gateway.rest.draining import on_reply_head
from gateway.rest.errors import RECORDER_KEY, Handler, answered
from gateway.rest.management import ManagementRoutes
from gateway.rest.ops import OpsRoutes, ReadinessReport
from gateway.rest.tfserving import TfServingRoutes
from gateway.rest.torchserve import TorchServeRoutes
from gateway.rest.tracing import UNROUTED, server_spans
from gateway.rest.v2 import Readiness, V2Routes
from gateway.telemetry import request_ids
from gateway.telemetry.requests import RequestRecorder
from gateway.telemetry.setup import Tracing

#: The `Server` header of every reply. aiohttp's default names the Python and aiohttp versions,
#: which tells a scanner which published vulnerabilities to try.
SERVER_NAME = "inference-gateway"


def build_http_app(pipeline: Pipeline, config: ServerConfig, readiness: Readiness,
                   metrics: GatewayMetrics, inflight: InflightLimits,
                   tracing: Tracing | None = None, drain: Drain | None = None,
                   report: ReadinessReport | None = None,
                   more: Sequence[web.RouteDef] = ()) -> web.Application:
    """Every door's routes, and `more` (the admin API's). Each handler is wrapped once here
    (`answered`, and `server_spans` when tracing): the app has no middleware for aiohttp to run
    per request."""
    drain = drain or Drain()
    untraced = frozenset() if config.log_probes else PROBE_PATHS

    def wrapped(handler: Handler) -> Handler:
        handler = answered(handler, drain)
        return handler if tracing is None else server_spans(handler, tracing.tracer, untraced)

    # aiohttp's own cap must admit uploads; each route then enforces its own limit.
    # Bodies are inflated by `gateway.rest.body` as they are read, within the route's limit,
    # never by the parser as they arrive (a 0.5 MB gzip bomb inflated on the loop in one go).
    app = web.Application(handler_args={"auto_decompress": False},
                          client_max_size=max(config.max_body_bytes, config.max_upload_bytes))
    app.on_response_prepare.append(reply_head(drain))
    app[CONFIG_KEY] = config
    app[INFLIGHT_KEY] = inflight
    app[RECORDER_KEY] = RequestRecorder(metrics, access_log=config.access_log,
                                        traced=tracing is not None)
    routes = [route for route_set in (
        TfServingRoutes(pipeline), V2Routes(pipeline, readiness), ManagementRoutes(pipeline),
        OpsRoutes(readiness, metrics, report), TorchServeRoutes(pipeline, readiness))
        for route in route_set.routes()]
    app.add_routes(web.RouteDef(r.method, r.path, wrapped(r.handler), r.kwargs)
                   for r in (*routes, *more))
    # last: what no route takes answers 404 (405 where another method would be taken)
    app.router.add_route("*", "/{unrouted:.*}", wrapped(_unrouted))  # canonically UNROUTED
    return app


async def _unrouted(request: web.Request) -> web.StreamResponse:
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource.canonical != UNROUTED:
            allowed |= (await resource.resolve(request))[1]
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, allowed)
    raise web.HTTPNotFound()


def reply_head(drain: Drain) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """The one `on_response_prepare` hook (each hook is a coroutine per reply). It runs after
    aiohttp set its default `Server`, for every reply, errors and streams included: each
    carries the request's id."""

    async def prepare(request: web.Request, response: web.StreamResponse) -> None:
        on_reply_head(request, response, drain)
        headers = response.headers
        headers[request_ids.HEADER] = request_id_of(request)
        headers[hdrs.SERVER] = SERVER_NAME

    return prepare
