"""Operations endpoints: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from gateway.errors import Unavailable
from gateway.metrics import GatewayMetrics
from gateway.rest.common import json_reply
from gateway.rest.v2 import Readiness

#: `/readyz?verbose`: the replica's readiness with every backend's and model's state.
ReadinessReport = Callable[[], Awaitable[dict[str, Any]]]


class OpsRoutes:
    def __init__(self, readiness: Readiness, metrics: GatewayMetrics,
                 report: ReadinessReport | None = None) -> None:
        self._readiness = readiness
        self._metrics = metrics
        self._report = report

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/healthz", self.healthz), web.get("/readyz", self.readyz),
                web.get("/metrics", self.metrics)]

    async def healthz(self, request: web.Request) -> web.Response:
        return json_reply({"status": "alive"})

    async def readyz(self, request: web.Request) -> web.Response:
        """Whether this replica should get traffic (what a Kubernetes readiness probe asks);
        `?verbose` also lists each backend's models and whether they serve, with the same
        status code (docs/deployment.md)."""
        if "verbose" in request.query and self._report is not None:
            report = await self._report()
            ready = report["status"] == "ready"
            reply = json_reply(report, status=200 if ready else 503)
            if not ready:
                reply.headers["Retry-After"] = "1"
            return reply
        ready, why = await self._readiness()
        if not ready:
            raise Unavailable(f"not ready: {why}", retry_after_s=1)
        return json_reply({"status": "ready"})

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus text, or OpenMetrics (which carries the trace-id exemplars) when the
        scraper's Accept header asks for it. In a group of workers, every worker's metrics."""
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encode(self._metrics.exposition),
                            headers={"Content-Type": content_type})
