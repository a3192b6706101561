"""Assembles the grpc.aio server: the dialect servicers, reflection, and the standard health
service, whose status follows the gateway's readiness. Every call of a dialect but the v2
server-level ones is authenticated from its metadata before its message is read
(`gateway.grpc.authentication`); the listener's HTTP/2 limits come from `[server]` and
`[server.grpc]` (message size, streams per connection, ping enforcement, connection idle and
age); with `[server.tls]` it serves TLS or mTLS (`gateway.tls`). With tracing on,
`gateway.grpc.tracing` makes each call's server span (semantic-convention `rpc.*` attributes,
the caller's `traceparent` continued), refused calls included; health checks and reflection
are left out."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gateway.admission import InflightLimits
from gateway.config import ServerConfig
from gateway.drain import Drain
from gateway.grpc import tfserving, v2
from gateway.grpc.authentication import Authentication
from gateway.grpc.calls import GrpcCalls
from gateway.grpc.tfserving import ModelService, PredictionService
from gateway.grpc.tracing import ServerSpans
from gateway.grpc.v2 import InferenceService
from gateway.metrics import GatewayMetrics
from gateway.pipeline import Pipeline
from gateway.rest.v2 import Readiness
from gateway.telemetry.requests import RequestRecorder
from gateway.telemetry.setup import Tracing
from gateway.tls.listeners import grpc_credentials
from protos.inference import grpc_service_pb2, grpc_service_pb2_grpc
from protos.tensorflow_serving.apis import (
    model_service_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2,
    prediction_service_pb2_grpc,
)

MAX_SEND_BYTES = 64 * 1024 * 1024  # replies: the gateway's own, not a client's
#: Misbehaving pings a connection may send before it is closed with GOAWAY (gRPC's default).
MAX_PING_STRIKES = 2
_HEALTH_POLL_S = 1.0
#: Callable without a token, as REST's /v2/health/* and /v2 are.
OPEN_V2_METHODS = ("ServerLive", "ServerReady", "ServerMetadata")
_SERVICES = {  # each dialect's services and the front door they belong to
    prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"]: tfserving.FRONTEND,
    model_service_pb2.DESCRIPTOR.services_by_name["ModelService"]: tfserving.FRONTEND,
    grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]: v2.FRONTEND,
}


def server_options(config: ServerConfig) -> list[tuple[str, int]]:
    """gRPC core's channel arguments for the listener (include/grpc/impl/channel_arg_names.h)."""
    limits = config.grpc
    return [
        ("grpc.max_send_message_length", MAX_SEND_BYTES),
        ("grpc.max_receive_message_length", config.max_body_bytes),  # REST's body limit
        ("grpc.max_concurrent_streams", limits.max_concurrent_streams),
        # Count streams as HTTP/2 does (open ones), so that a client's streams beyond the
        # limit wait for a free one. gRPC core's default also counts streams that ended but
        # grpc.aio has not yet released, and refuses new ones (REFUSED_STREAM) the client
        # then fails with UNAVAILABLE although it kept to the limit. (Experimental arg,
        # src/core/ext/transport/chttp2/transport/internal.h.)
        ("grpc.http.overload_protection", 0),
        # A client may ping once per interval while it has calls or not; more often earns a
        # strike, and past MAX_PING_STRIKES the connection gets GOAWAY (ENHANCE_YOUR_CALM,
        # "too_many_pings"). Without permit_without_calls an idle connection could ping only
        # every two hours, which would punish the common 30-60 s client keepalive.
        ("grpc.http2.min_ping_interval_without_data_ms", _ms(limits.min_ping_interval_s)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_ping_strikes", MAX_PING_STRIKES),
        ("grpc.max_connection_idle_ms", _ms(limits.max_connection_idle_s)),
        ("grpc.max_connection_age_ms", _ms(limits.max_connection_age_s)),
        ("grpc.max_connection_age_grace_ms", _ms(limits.max_connection_age_grace_s)),
        ("grpc.so_reuseport", 1),
    ]


def protected_methods() -> dict[str, str]:
    """Method path -> front door, for every dialect RPC that needs a token."""
    protected = {}
    for service, frontend in _SERVICES.items():
        for method in service.methods:
            if service.name == "GRPCInferenceService" and method.name in OPEN_V2_METHODS:
                continue
            protected[f"/{service.full_name}/{method.name}"] = frontend
    return protected


def _ms(seconds: float) -> int:
    return min(round(seconds * 1000), 2**31 - 1)  # INT_MAX is gRPC's "unlimited"


class GrpcServer:
    def __init__(self, pipeline: Pipeline, config: ServerConfig, readiness: Readiness,
                 metrics: GatewayMetrics, inflight: InflightLimits,
                 tracing: Tracing | None = None, drain: Drain | None = None) -> None:
        self._config = config
        self._readiness = readiness
        recorder = RequestRecorder(metrics, access_log=config.access_log,
                                   traced=tracing is not None)
        calls = GrpcCalls(config, recorder, None if tracing is None else tracing.tracer,
                          inflight, drain)
        interceptors: list[grpc.aio.ServerInterceptor] = []
        if tracing is not None:  # first, so that the call's span wraps a refusal too
            interceptors.append(ServerSpans(tracing.tracer))
        interceptors.append(Authentication(pipeline, calls, protected_methods()))
        self._server = grpc.aio.server(options=server_options(config),
                                       interceptors=interceptors)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionService(pipeline, calls), self._server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelService(pipeline, calls), self._server)
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceService(pipeline, calls, readiness), self._server)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        self._services = tuple(service.full_name for service in _SERVICES)
        reflection.enable_server_reflection(
            (*self._services, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server)
        self._watcher: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self) -> int:
        address, tls = f"{self._config.host}:{self._config.grpc_port}", self._config.tls
        self.port = (self._server.add_insecure_port(address) if tls is None
                     else self._server.add_secure_port(address, grpc_credentials(tls)))
        await self._server.start()
        await self._update_health()
        self._watcher = asyncio.get_running_loop().create_task(self._watch_readiness())
        return self.port

    async def not_serving(self) -> None:
        """Health says NOT_SERVING for good (the drain began); calls are still served."""
        if self._watcher:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        await self._health.enter_graceful_shutdown()

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting connections and calls at once (GOAWAY to every client); calls in
        progress get `grace_s` to finish, then fail with UNAVAILABLE."""
        await self.not_serving()
        await self._server.stop(grace_s)

    async def _watch_readiness(self) -> None:
        while True:
            await asyncio.sleep(_HEALTH_POLL_S)
            await self._update_health()

    async def _update_health(self) -> None:
        ready, _ = await self._readiness()
        status = (health_pb2.HealthCheckResponse.SERVING if ready
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for service in ("", *self._services):
            await self._health.set(service, status)
