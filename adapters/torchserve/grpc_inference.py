"""TorchServe's gRPC inference API: `Predictions`, or `StreamPredictions` for the handlers
configured as streaming. The body goes to the handler as REST would give it (`fields`): its
`body` input, or a form's fields by name. What gRPC cannot carry (headers either way, the
handler's status and content type, explanations) is listed in docs/api.md."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import grpc
from google.protobuf import empty_pb2

from adapters.endpoints import Balancer, GrpcEndpoint, Rpc, grpc_probe, rpc_probe
from adapters.pool.failures import for_client, from_grpc
from adapters.torchserve import errors, fields
from adapters.torchserve.config import TorchServeAdapterConfig
from adapters.torchserve.transport import PredictCall, Reply
from gateway.errors import BackendError, GatewayError
from gateway.metrics import GatewayMetrics
from gateway.telemetry import propagation
from protos.torchserve import inference_pb2, inference_pb2_grpc

SERVICE = "org.pytorch.serve.grpc.inference.InferenceAPIsService"
_STUB = inference_pb2_grpc.InferenceAPIsServiceStub
#: The health probe: TorchServe's `Ping` (it serves no grpc.health.v1)
_PING = rpc_probe(Rpc(SERVICE, "Ping", _STUB), empty_pb2.Empty(),
                  lambda reply: "Unhealthy" not in reply.health)


class GrpcInference:
    def __init__(self, config: TorchServeAdapterConfig,
                 metrics: GatewayMetrics | None = None) -> None:
        self._backend = config.name
        self._streaming = frozenset(config.streaming_models)
        self._balancer = Balancer(config.name,
                                  [GrpcEndpoint(a, config.pool) for a in config.endpoints],
                                  config.pool, probe=grpc_probe(_PING), metrics=metrics)

    async def predict(self, call: PredictCall) -> Reply:
        if call.explain:
            raise GatewayError("TorchServe's gRPC inference API serves no explanations",
                               status=501, kind="MethodNotAllowedException")
        request = inference_pb2.PredictionsRequest(
            model_name=call.model, model_version=call.version or "",
            input=fields.inputs(call.body, call.content_type))
        seconds = max(call.seconds, 0.001)
        if call.model in self._streaming:
            return await self._balancer.call(lambda e: self._stream(e, request, seconds))
        return await self._balancer.call(lambda e: self._unary(e, request, seconds))

    async def _unary(self, endpoint: GrpcEndpoint, request: Any, seconds: float) -> Reply:
        try:
            with propagation.grpc_call(SERVICE, "Predictions", endpoint.address) as out:
                reply = await endpoint.stub(_STUB).Predictions(request, timeout=seconds,
                                                        metadata=out.metadata)
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(exc, errors.from_grpc, self._where(endpoint)) from None
        return Reply(reply.prediction)

    async def _stream(self, endpoint: GrpcEndpoint, request: Any, seconds: float) -> Reply:
        """The first part now (a failure before it may be retried elsewhere), the rest later."""
        try:
            with propagation.grpc_call(SERVICE, "StreamPredictions", endpoint.address) as out:
                call = endpoint.stub(_STUB).StreamPredictions(request, timeout=seconds,
                                                       metadata=out.metadata)
                first = await call.read()
        except grpc.aio.AioRpcError as exc:
            raise from_grpc(exc, errors.from_grpc, self._where(endpoint)) from None
        if first is grpc.aio.EOF:
            raise BackendError("TorchServe's stream ended without a response")
        return Reply(first.prediction, rest=self._rest(endpoint, call))

    async def _rest(self, endpoint: GrpcEndpoint, call: Any) -> AsyncGenerator[bytes, None]:
        endpoint.outstanding += 1
        try:
            while (message := await call.read()) is not grpc.aio.EOF:
                yield message.prediction
        except grpc.aio.AioRpcError as exc:
            raise for_client(from_grpc(exc, errors.from_grpc, self._where(endpoint))) from None
        finally:
            endpoint.outstanding -= 1
            call.cancel()  # a no-op once the stream ended; frees it if the caller left early

    def _where(self, endpoint: GrpcEndpoint) -> str:
        return f"TorchServe backend {self._backend}"  # the address goes to the log only

    async def close(self) -> None:
        await self._balancer.close()
        for endpoint in self._balancer.endpoints:
            await endpoint.channel.close()
