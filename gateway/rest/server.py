"""Assembles the aiohttp application from the dialect route sets."""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Middleware

from gateway.admission import InflightLimits
from gateway.config import ServerConfig
from gateway.metrics import GatewayMetrics
from gateway.pipeline import Pipeline
from gateway.rest.common import CONFIG_KEY, INFLIGHT_KEY
from gateway.rest.errors import RECORDER_KEY, errors_and_metrics
from gateway.rest.management import ManagementRoutes
from gateway.rest.ops import OpsRoutes
from gateway.rest.tfserving import TfServingRoutes
from gateway.rest.torchserve import TorchServeRoutes
from gateway.rest.tracing import server_spans
from gateway.rest.v2 import Readiness, V2Routes
from gateway.telemetry.requests import RequestRecorder
from gateway.telemetry.setup import Tracing


def build_http_app(pipeline: Pipeline, config: ServerConfig, readiness: Readiness,
                   metrics: GatewayMetrics, inflight: InflightLimits,
                   tracing: Tracing | None = None) -> web.Application:
    middlewares: list[Middleware] = [errors_and_metrics]
    if tracing is not None:
        middlewares.insert(0, server_spans(tracing.tracer))
    # aiohttp's own cap must admit uploads; each route then enforces its own limit.
    app = web.Application(middlewares=middlewares,
                          client_max_size=max(config.max_body_bytes, config.max_upload_bytes))
    app[CONFIG_KEY] = config
    app[INFLIGHT_KEY] = inflight
    app[RECORDER_KEY] = RequestRecorder(metrics, access_log=config.access_log,
                                        traced=tracing is not None)
    for route_set in (TfServingRoutes(pipeline), V2Routes(pipeline, readiness),
                      ManagementRoutes(pipeline), OpsRoutes(readiness, metrics),
                      TorchServeRoutes(pipeline, readiness)):
        app.add_routes(route_set.routes())
    return app
