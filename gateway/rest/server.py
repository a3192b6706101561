"""Assembles the aiohttp application from the dialect route sets."""

from __future__ import annotations

from aiohttp import web

from gateway.config import ServerConfig
from gateway.metrics import GatewayMetrics
from gateway.pipeline import Pipeline
from gateway.rest.common import CONFIG_KEY
from gateway.rest.errors import METRICS_KEY, errors_and_metrics
from gateway.rest.management import ManagementRoutes
from gateway.rest.ops import OpsRoutes
from gateway.rest.tfserving import TfServingRoutes
from gateway.rest.torchserve import TorchServeRoutes
from gateway.rest.v2 import Readiness, V2Routes


def build_http_app(pipeline: Pipeline, config: ServerConfig, readiness: Readiness,
                   metrics: GatewayMetrics) -> web.Application:
    # aiohttp's own cap must admit uploads; each route then enforces its own limit.
    app = web.Application(middlewares=[errors_and_metrics],
                          client_max_size=max(config.max_body_bytes, config.max_upload_bytes))
    app[CONFIG_KEY] = config
    app[METRICS_KEY] = metrics
    for route_set in (TfServingRoutes(pipeline), V2Routes(pipeline, readiness),
                      ManagementRoutes(pipeline), OpsRoutes(readiness, metrics),
                      TorchServeRoutes(pipeline, readiness)):
        app.add_routes(route_set.routes())
    return app
