"""Assembles the grpc.aio server: the dialect servicers, reflection, and the standard health
service, whose status follows the gateway's readiness. With tracing on, the official
OpenTelemetry interceptor makes each call's server span (semantic-convention `rpc.*`
attributes, the caller's `traceparent` continued); health checks and reflection are left out."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.instrumentation.grpc import aio_server_interceptor
from opentelemetry.instrumentation.grpc.filters import (
    any_of,
    negate,
    service_name,
    service_prefix,
)

from gateway.config import ServerConfig
from gateway.grpc.calls import GrpcCalls
from gateway.grpc.tfserving import ModelService, PredictionService
from gateway.grpc.v2 import InferenceService
from gateway.metrics import GatewayMetrics
from gateway.pipeline import Pipeline
from gateway.rest.v2 import Readiness
from gateway.telemetry.requests import RequestRecorder
from gateway.telemetry.setup import Tracing
from protos.inference import grpc_service_pb2, grpc_service_pb2_grpc
from protos.tensorflow_serving.apis import (
    model_service_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2,
    prediction_service_pb2_grpc,
)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_HEALTH_POLL_S = 1.0


class GrpcServer:
    def __init__(self, pipeline: Pipeline, config: ServerConfig, readiness: Readiness,
                 metrics: GatewayMetrics, tracing: Tracing | None = None) -> None:
        self._config = config
        self._readiness = readiness
        self._server = grpc.aio.server(options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", max(MAX_MESSAGE_BYTES,
                                                    config.max_body_bytes)),
            ("grpc.so_reuseport", 1),
        ], interceptors=[] if tracing is None else [aio_server_interceptor(
            tracing.provider, negate(any_of(service_name(health.SERVICE_NAME),
                                            service_prefix("grpc.reflection."))))])
        recorder = RequestRecorder(metrics, access_log=config.access_log,
                                   traced=tracing is not None)
        calls = GrpcCalls(config, recorder, None if tracing is None else tracing.tracer)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionService(pipeline, calls), self._server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelService(pipeline, calls), self._server)
        grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceService(pipeline, calls, readiness), self._server)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        self._services = (
            prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"].full_name,
            model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name,
            grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
        )
        reflection.enable_server_reflection(
            (*self._services, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server)
        self._watcher: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self) -> int:
        self.port = self._server.add_insecure_port(
            f"{self._config.host}:{self._config.grpc_port}")
        await self._server.start()
        await self._update_health()
        self._watcher = asyncio.get_running_loop().create_task(self._watch_readiness())
        return self.port

    async def stop(self, grace_s: float = 5.0) -> None:
        if self._watcher:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await self._health.enter_graceful_shutdown()
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
