"""Operations endpoints: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from gateway.errors import Unavailable
from gateway.metrics import GatewayMetrics
from gateway.rest.common import json_reply
from gateway.rest.v2 import Readiness


class OpsRoutes:
    def __init__(self, readiness: Readiness, metrics: GatewayMetrics) -> None:
        self._readiness = readiness
        self._metrics = metrics

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/healthz", self.healthz), web.get("/readyz", self.readyz),
                web.get("/metrics", self.metrics)]

    async def healthz(self, request: web.Request) -> web.Response:
        return json_reply({"status": "alive"})

    async def readyz(self, request: web.Request) -> web.Response:
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
