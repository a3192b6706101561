"""The composition root: the only place that builds objects from config."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

from aiohttp import web

from adapters.kinds import build_adapter
from gateway.admission import InflightLimits
from gateway.auth.factory import build_authenticator, build_authorizer
from gateway.auth.failures import Reason
from gateway.auth.jwt_authenticator import JwtAuthenticator
from gateway.backend import Adapter, ModelStore, is_remote
from gateway.config import GatewayConfig
from gateway.drain import Drain
from gateway.errors import GatewayError
from gateway.grpc.server import GrpcServer
from gateway.metrics import GatewayMetrics
from gateway.pipeline import Pipeline
from gateway.policy.editor import PolicyEditor, PolicySync
from gateway.policy.metrics import RoutingMetrics
from gateway.policy.mirror import Mirror
from gateway.policy.sync import RedisPolicySync
from gateway.policy.watch import PolicyWatcher
from gateway.ratelimit.factory import build_limiter
from gateway.rest.admin import AdminRoutes
from gateway.rest.server import build_http_app
from gateway.routing import PolicyRouter, RouteTable
from gateway.telemetry.setup import build_tracing
from gateway.types import ModelRef
from gateway.worker import WorkerLink

log = logging.getLogger(__name__)


CLOSE_STEP_S = 10.0  # longest a shutdown waits for one component


class Gateway:
    def __init__(self, config: GatewayConfig, worker: WorkerLink | None = None) -> None:
        """Raises `ConfigError` if the policy files are invalid. `worker`: this gateway is a
        worker of `gateway serve --workers N` (gateway/supervisor.py)."""
        self.config = config
        self.tracing = build_tracing(config.tracing)
        self.metrics = GatewayMetrics()
        self.drain = Drain()  # the shutdown sequence (gateway.shutdown) sets it
        self.inflight = InflightLimits(config.server.max_inflight,
                                       config.server.max_inflight_per_model)
        self.metrics.watch_inflight(lambda: self.inflight.in_flight)
        self._ready = False  # as last asked; the gRPC health poll asks every second
        self.metrics.watch_readiness(lambda: int(self._ready))
        self.adapters: dict[str, Adapter] = {
            name: build_adapter(adapter, config.models_of(name), self.metrics)
            for name, adapter in config.adapters.items()}
        routing_metrics = RoutingMetrics(self.metrics.registry, self.metrics.model_label)
        policies = config.policies
        # Replicas share policies through Redis; without it, workers through their supervisor.
        sync: PolicySync | None = (
            RedisPolicySync(config.redis, policies.redis_key, policies.history)
            if config.redis else worker.policy_sync() if worker is not None else None)
        # The watcher looks at the files before the editor reads them: an edit in between is
        # a change it will see.
        self._watcher = (PolicyWatcher(policies.directory, policies.poll_interval_s,
                                       lambda: self.policies.reload_files())
                         if policies.directory else None)
        self.policies = PolicyEditor(set(self.adapters), policies.directory, policies.history,
                                     routing_metrics, sync)
        policy = self.policies.store
        table = RouteTable({m.name: self.adapters[m.adapter] for m in config.models.values()},
                           list(self.adapters.values()))
        self.limiter = build_limiter(config.redis, lambda: policy.active.policy.limits,
                                     self.metrics, config.limits)
        self.mirror = Mirror(routing_metrics, policies.mirror_max_in_flight)
        store = self.adapters.get(config.management_adapter or "")
        authenticator = build_authenticator(config.auth)
        if isinstance(authenticator, JwtAuthenticator):
            self.metrics.watch_auth_failures(authenticator.reasons, [r.value for r in Reason])
        adapters = tuple(self.adapters.values())
        self.metrics.label_models(lambda model: model in config.models or any(
            a.serves(model) for a in adapters) or any(
            r.match.model == model for r in policy.active.policy.routes))
        self.pipeline = Pipeline(
            authenticator, build_authorizer(config.auth), self.limiter,
            PolicyRouter(lambda: policy.active.policy, self.adapters, table),
            store if isinstance(store, ModelStore) else None, self.mirror, routing_metrics)

    async def start(self) -> None:
        self.metrics.start()
        await asyncio.gather(*(a.start() for a in self.adapters.values()))
        await self.policies.start()
        if self._watcher is not None:
            self._watcher.start()

    async def close(self) -> None:
        """Each step is bounded: a dead Redis or backend must not hold up a shutdown."""
        steps: list[tuple[str, Awaitable[None]]] = []
        if self._watcher is not None:
            steps.append(("policy watcher", self._watcher.close()))
        steps += [("policies", self.policies.close()), ("mirror", self.mirror.close())]
        steps += [(f"adapter {name}", a.close()) for name, a in self.adapters.items()]
        steps.append(("rate limiter", self.limiter.close()))
        if self.tracing is not None:
            steps.append(("tracing", self.tracing.close()))
        steps.append(("metrics", self.metrics.close()))
        for what, step in steps:
            try:
                async with asyncio.timeout(CLOSE_STEP_S):
                    await step
            except TimeoutError:
                log.warning("shutdown: %s did not close within %.0f s; going on", what,
                            CLOSE_STEP_S)

    def reload_policies(self) -> None:
        """SIGHUP: read the policy files now."""
        if self._watcher is None:
            log.warning("SIGHUP: no [policies] directory to reload")
            return
        self._watcher.wake()

    async def readiness(self) -> tuple[bool, str]:
        """Whether this replica should get traffic: not draining, and the models it runs
        itself loaded. A remote backend that is down is down for every replica alike: taking
        them all out of rotation would also stop the models that work, so it shows in
        `readiness_report` and per model, not here. Also what the `gateway_ready` gauge shows
        until the next time it is asked."""
        if self.drain.draining:
            self._ready = False
            return False, "shutting down"
        reasons = []
        for name, adapter in self.adapters.items():
            if is_remote(adapter):
                continue
            ready, why = await adapter.health()
            if not ready:
                reasons.append(f"{name}: {why}")
        self._ready = not reasons
        return not reasons, "; ".join(reasons) or "ok"

    async def readiness_report(self) -> dict[str, Any]:
        """`/readyz?verbose`: `readiness`, and whether each backend's models serve now."""
        ready, why = await self.readiness()
        names = [(name, model) for name, a in self.adapters.items()
                 for model in sorted({*a.model_names(), *self.config.models_of(name)})]
        states = await asyncio.gather(*(_model_state(self.adapters[name], model)
                                        for name, model in names))
        backends: dict[str, dict[str, Any]] = {
            name: {"remote": is_remote(a), "models": {}} for name, a in self.adapters.items()}
        for (name, model), state in zip(names, states, strict=True):
            backends[name]["models"][model] = state
        report: dict[str, Any] = {"status": "ready" if ready else "not ready"}
        if not ready:
            report["reason"] = why
        report["backends"] = backends
        return report

    def grpc_server(self) -> GrpcServer:
        return GrpcServer(self.pipeline, self.config.server, self.readiness, self.metrics,
                          self.inflight, self.tracing, self.drain)

    def http_app(self) -> web.Application:
        app = build_http_app(self.pipeline, self.config.server, self.readiness, self.metrics,
                             self.inflight, self.tracing, self.drain, self.readiness_report,
                             AdminRoutes(self.pipeline, self.policies).routes())

        async def lifecycle(_: web.Application):  # type: ignore[no-untyped-def]
            # Adapters live as long as the HTTP app; the gRPC server starts after and stops
            # before it, so both front doors share one set of adapters.
            await self.start()
            yield
            await self.close()

        app.cleanup_ctx.append(lifecycle)
        return app


async def _model_state(adapter: Adapter, model: str) -> dict[str, Any]:
    """`{"ready": true}` while a version is AVAILABLE, else also why not."""
    try:
        statuses = await adapter.model_status(ModelRef(model))
    except GatewayError as exc:
        return {"ready": False, "reason": exc.message}
    if any(s.state == "AVAILABLE" for s in statuses):
        return {"ready": True}
    return {"ready": False, "reason": "no version AVAILABLE"}
