"""The gRPC flavour of the endpoint pool (adapters/pool/) for every remote adapter: a channel
per endpoint (TLS and mTLS when configured), its probe (`grpc.health.v1` where the backend
serves it, else the kind's own status call), and `GrpcPool` for unary calls, each attempt a
client span whose `traceparent` goes to the backend."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from adapters.pool.balancer import Balancer
from adapters.pool.endpoint import Endpoint
from adapters.pool.failures import ErrorMapper, by_status_code, from_grpc
from adapters.pool.health import Probe, ProbeFailed
from adapters.pool_config import BackendTls, PoolConfig
from gateway.errors import GatewayError
from gateway.metrics import GatewayMetrics
from gateway.model_config import ModelConfig
from gateway.telemetry import propagation

__all__ = ["Balancer", "Endpoint", "ErrorMapper", "GrpcEndpoint", "GrpcPool", "Rpc",
           "grpc_probe", "rpc_probe"]


class GrpcEndpoint(Endpoint):
    def __init__(self, address: str, config: PoolConfig) -> None:
        super().__init__(address)
        options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.keepalive_time_ms", int(config.keepalive_time_s * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.initial_reconnect_backoff_ms", 100),
            # gRPC's connect timeout: without it a host that accepts but never answers holds
            # each call for 20 s (or its whole deadline) instead of failing over
            ("grpc.min_reconnect_backoff_ms", int(config.connect_timeout_s * 1000)),
            ("grpc.max_reconnect_backoff_ms", 2000),
            # the balancer retries elsewhere itself; gRPC's own retry support costs every
            # call ~5 % of its CPU (the retry filter's bookkeeping) for calls that never use it
            ("grpc.enable_retries", 0),
        ]
        if config.tls is None:
            self.channel = grpc.aio.insecure_channel(address, options=options)
        else:
            if config.tls.server_name is not None:
                options.append(("grpc.ssl_target_name_override", config.tls.server_name))
            self.channel = grpc.aio.secure_channel(address, _credentials(config.tls),
                                                   options=options)
        self.health_service = True  # until it answers UNIMPLEMENTED
        self._stubs: dict[Callable[[grpc.aio.Channel], Any], Any] = {}

    def stub(self, factory: Callable[[grpc.aio.Channel], Any]) -> Any:
        """One stub per service and channel: building one per call shows in profiles."""
        stub = self._stubs.get(factory)
        if stub is None:
            stub = self._stubs[factory] = factory(self.channel)
        return stub


def _credentials(tls: BackendTls) -> grpc.ChannelCredentials:
    def read(path: Path | None) -> bytes | None:
        return path.read_bytes() if path is not None else None

    return grpc.ssl_channel_credentials(root_certificates=read(tls.ca_file),
                                        private_key=read(tls.key_file),
                                        certificate_chain=read(tls.cert_file))


@dataclass(frozen=True, slots=True)
class Rpc:
    """A backend method: its names, and the stub's callable for it on an endpoint."""

    service: str
    method: str
    stub: Callable[[grpc.aio.Channel], Any]  # the generated stub class

    def on(self, endpoint: GrpcEndpoint) -> Any:
        return getattr(endpoint.stub(self.stub), self.method)


#: gRPC codes that mean the endpoint, not the question, is wrong: a probe that gets one fails.
_PROBE_FAILS = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                          grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
                          grpc.StatusCode.DATA_LOSS, grpc.StatusCode.RESOURCE_EXHAUSTED})


def rpc_probe(rpc: Rpc, request: Any,
              fit: Callable[[Any], bool] = lambda reply: True) -> Probe[GrpcEndpoint]:
    """A kind's status call as a probe: it passes if the endpoint answers (a NOT_FOUND is an
    answer) and `fit(reply)`."""
    async def probe(endpoint: GrpcEndpoint, seconds: float) -> None:
        try:
            reply = await rpc.on(endpoint)(request, timeout=seconds)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in _PROBE_FAILS:
                raise ProbeFailed(f"{rpc.method}: {exc.code().name}: {exc.details()}") from None
            return
        if not fit(reply):
            raise ProbeFailed(f"{rpc.method} answered {reply!r:.80}")

    return probe


def grpc_probe(fallback: Probe[GrpcEndpoint] | None) -> Probe[GrpcEndpoint]:
    """`grpc.health.v1.Health/Check` (the whole server, service ""); `fallback` on endpoints
    that do not serve it (TF Serving, TorchServe), else any answer passes."""
    async def probe(endpoint: GrpcEndpoint, seconds: float) -> None:
        if endpoint.health_service:
            try:
                reply = await endpoint.stub(health_pb2_grpc.HealthStub).Check(
                    health_pb2.HealthCheckRequest(), timeout=seconds)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                    raise ProbeFailed(f"health: {exc.code().name}: {exc.details()}") from None
                endpoint.health_service = False
            else:
                if reply.status != health_pb2.HealthCheckResponse.SERVING:
                    raise ProbeFailed("health: " + health_pb2.HealthCheckResponse.ServingStatus
                                      .Name(reply.status))
                return
        if fallback is not None:
            await fallback(endpoint, seconds)

    return probe


class GrpcPool:
    """Unary calls to one backend's gRPC endpoints. Failures are mapped by the kind's
    `error` (by default by status code); UNAVAILABLE must map to `Unavailable`, so the call is
    tried once elsewhere.
    `probe`: the kind's status call, for endpoints without `grpc.health.v1`."""

    def __init__(self, backend: str, addresses: Sequence[str], config: PoolConfig,
                 error: ErrorMapper = by_status_code, *,
                 probe: Probe[GrpcEndpoint] | None = None,
                 metrics: GatewayMetrics | None = None) -> None:
        self._where = "backend"  # client-facing: the backend's name and address are logged
        self._error = error
        self.balancer = Balancer(backend, [GrpcEndpoint(a, config) for a in addresses],
                                 config, probe=grpc_probe(probe), metrics=metrics)
        self.endpoints = self.balancer.endpoints

    async def call(self, rpc: Rpc, request: Any, *, seconds: float) -> Any:
        """Call `rpc` with `request` on the least busy endpoint, `seconds` at most in all."""
        deadline = time.monotonic() + seconds
        return await self.balancer.call(lambda endpoint: self._attempt(
            endpoint, rpc, request, deadline - time.monotonic()))

    async def _attempt(self, endpoint: GrpcEndpoint, rpc: Rpc, request: Any,
                       seconds: float) -> Any:
        try:
            with propagation.grpc_call(rpc.service, rpc.method, endpoint.address) as out:
                return await rpc.on(endpoint)(request, timeout=max(seconds, 0.001),
                                              metadata=out.metadata)
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(exc, self._error, self._where) from None

    async def close(self) -> None:
        await self.balancer.close()
        for endpoint in self.endpoints:
            await endpoint.channel.close()


class GrpcBackend:
    """What the gRPC kinds whose models are named in config (TF Serving, v2) share: their
    pool, made by the kind's `start` (its probe differs) and closed here, and the models
    config gives them. The kind supplies `infer`, metadata, status and health."""

    remote = True  # gateway.backend.is_remote: readiness does not wait for it

    def __init__(self, name: str, models: dict[str, ModelConfig],
                 metrics: GatewayMetrics | None) -> None:
        self.name = name
        self._models = models
        self._metrics = metrics
        self._pool: GrpcPool | None = None

    async def close(self) -> None:
        if self._pool:
            await self._pool.close()

    @property
    def pool(self) -> GrpcPool:
        if self._pool is None:
            raise GatewayError(f"adapter {self.name} is not started")
        return self._pool

    def serves(self, model: str) -> bool:
        return model in self._models

    def model_names(self) -> list[str]:
        return sorted(self._models)
