"""The composition root: the only place that builds objects from config."""

from __future__ import annotations

import asyncio

from aiohttp import web

from adapters.base import Adapter, ModelStore
from adapters.onnx import OnnxAdapter
from adapters.tfserving import TfServingAdapter
from gateway.auth.factory import build_authenticator, build_authorizer
from gateway.config import AdapterConfig, GatewayConfig, ModelConfig, OnnxAdapterConfig
from gateway.grpc.server import GrpcServer
from gateway.metrics import GatewayMetrics
from gateway.pipeline import Pipeline
from gateway.ratelimit.factory import build_limiter
from gateway.rest.server import build_http_app
from gateway.routing import RouteTable


class Gateway:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.adapters: dict[str, Adapter] = {
            name: _build_adapter(adapter, config.models_of(name))
            for name, adapter in config.adapters.items()}
        router = RouteTable({m.name: self.adapters[m.adapter] for m in config.models.values()},
                            list(self.adapters.values()))
        store = self.adapters.get(config.management_adapter or "")
        self.metrics = GatewayMetrics()
        self.pipeline = Pipeline(
            build_authenticator(config.auth), build_authorizer(config.auth),
            build_limiter(config.redis, lambda: ()), router,
            store if isinstance(store, ModelStore) else None)

    async def start(self) -> None:
        await asyncio.gather(*(a.start() for a in self.adapters.values()))

    async def close(self) -> None:
        await asyncio.gather(*(a.close() for a in self.adapters.values()))

    async def readiness(self) -> tuple[bool, str]:
        reasons = []
        for name, adapter in self.adapters.items():
            ready, why = await adapter.health()
            if not ready:
                reasons.append(f"{name}: {why}")
        return not reasons, "; ".join(reasons) or "ok"

    def grpc_server(self) -> GrpcServer:
        return GrpcServer(self.pipeline, self.config.server, self.readiness, self.metrics)

    def http_app(self) -> web.Application:
        app = build_http_app(self.pipeline, self.config.server, self.readiness, self.metrics)

        async def lifecycle(_: web.Application):  # type: ignore[no-untyped-def]
            # Adapters live as long as the HTTP app; the gRPC server starts after and stops
            # before it, so both front doors share one set of adapters.
            await self.start()
            yield
            await self.close()

        app.cleanup_ctx.append(lifecycle)
        return app


def _build_adapter(config: AdapterConfig, models: dict[str, ModelConfig]) -> Adapter:
    if isinstance(config, OnnxAdapterConfig):
        return OnnxAdapter(config, models)
    return TfServingAdapter(config, models)
