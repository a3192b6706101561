"""TorchServe's gRPC inference API: `Predictions`, or `StreamPredictions` for the handlers
configured as streaming. The body goes to the handler as its `data` input."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import grpc

from adapters.endpoints import Balancer, GrpcEndpoint
from adapters.torchserve import errors
from adapters.torchserve.config import TorchServeAdapterConfig
from adapters.torchserve.transport import PredictCall, Reply
from gateway.errors import BackendError
from gateway.telemetry import propagation
from protos.torchserve import inference_pb2, inference_pb2_grpc

#: The input name TorchServe's own gRPC clients use; handlers read `data` (or REST's `body`).
INPUT_NAME = "data"
SERVICE = "org.pytorch.serve.grpc.inference.InferenceAPIsService"
_STUB = inference_pb2_grpc.InferenceAPIsServiceStub


class GrpcInference:
    def __init__(self, config: TorchServeAdapterConfig) -> None:
        self._backend = config.name
        self._streaming = frozenset(config.streaming_models)
        self._balancer = Balancer([GrpcEndpoint(a, config.pool) for a in config.endpoints])

    async def predict(self, call: PredictCall) -> Reply:
        request = inference_pb2.PredictionsRequest(
            model_name=call.model, model_version=call.version or "",
            input={INPUT_NAME: call.body})
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
            raise errors.from_grpc(exc, self._where(endpoint)) from None
        return Reply(reply.prediction)

    async def _stream(self, endpoint: GrpcEndpoint, request: Any, seconds: float) -> Reply:
        """The first part now (a failure before it may be retried elsewhere), the rest later."""
        try:
            with propagation.grpc_call(SERVICE, "StreamPredictions", endpoint.address) as out:
                call = endpoint.stub(_STUB).StreamPredictions(request, timeout=seconds,
                                                       metadata=out.metadata)
                first = await call.read()
        except grpc.aio.AioRpcError as exc:
            raise errors.from_grpc(exc, self._where(endpoint)) from None
        if first is grpc.aio.EOF:
            raise BackendError(f"{self._where(endpoint)}: the stream ended without a response")
        return Reply(first.prediction, rest=self._rest(endpoint, call))

    async def _rest(self, endpoint: GrpcEndpoint, call: Any) -> AsyncGenerator[bytes, None]:
        endpoint.outstanding += 1
        try:
            while (message := await call.read()) is not grpc.aio.EOF:
                yield message.prediction
        except grpc.aio.AioRpcError as exc:
            raise errors.from_grpc(exc, self._where(endpoint)) from None
        finally:
            endpoint.outstanding -= 1
            call.cancel()  # a no-op once the stream ended; frees it if the caller left early

    def _where(self, endpoint: GrpcEndpoint) -> str:
        return f"TorchServe backend {self._backend} ({endpoint.address})"

    async def close(self) -> None:
        for endpoint in self._balancer.endpoints:
            await endpoint.channel.close()
