"""The Open Inference Protocol v2 gRPC API (`inference.GRPCInferenceService`), for Triton,
KServe and MLServer clients."""

from __future__ import annotations

import grpc

import gateway
from gateway.codecs import v2_grpc
from gateway.errors import NotFound
from gateway.grpc.calls import GrpcCalls
from gateway.pipeline import Pipeline
from gateway.rest.v2 import Readiness
from gateway.types import InferRequest, ModelRef, RequestContext
from protos.inference import grpc_service_pb2 as pb
from protos.inference import grpc_service_pb2_grpc

FRONTEND = "v2-grpc"


class InferenceService(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, pipeline: Pipeline, calls: GrpcCalls, readiness: Readiness) -> None:
        self._pipeline = pipeline
        self._calls = calls
        self._readiness = readiness

    async def ServerLive(self, request: pb.ServerLiveRequest,
                         context: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest,
                          context: grpc.aio.ServicerContext) -> pb.ServerReadyResponse:
        ready, _ = await self._readiness()
        return pb.ServerReadyResponse(ready=ready)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest,
                             context: grpc.aio.ServicerContext) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="inference-gateway", version=gateway.__version__)

    async def ModelReady(self, request: pb.ModelReadyRequest,
                         context: grpc.aio.ServicerContext) -> pb.ModelReadyResponse:
        async def ready(call: RequestContext) -> pb.ModelReadyResponse:
            try:
                statuses = await self._pipeline.status(_ref(request.name, request.version), call)
            except NotFound:
                return pb.ModelReadyResponse(ready=False)
            return pb.ModelReadyResponse(ready=any(s.state == "AVAILABLE" for s in statuses))

        return await self._calls.run(context, FRONTEND, request.name, ready)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest,
                            context: grpc.aio.ServicerContext) -> pb.ModelMetadataResponse:
        async def metadata(call: RequestContext) -> pb.ModelMetadataResponse:
            found = await self._pipeline.metadata(_ref(request.name, request.version), call)
            return v2_grpc.metadata_response(found)

        return await self._calls.run(context, FRONTEND, request.name, metadata)

    async def ModelInfer(self, request: pb.ModelInferRequest,
                         context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        async def infer(call: RequestContext) -> pb.ModelInferResponse:
            response = await self._pipeline.infer(InferRequest(
                ref=_ref(request.model_name, request.model_version), context=call,
                inputs=await v2_grpc.decode_inputs_async(request, budget=self._calls.budget),
                outputs=tuple(o.name for o in request.outputs) or None,
                id=request.id or None))
            return v2_grpc.encode_response(response)

        return await self._calls.run_infer(context, FRONTEND, request.model_name, infer)


def _ref(name: str, version: str) -> ModelRef:
    return ModelRef(name, version or None)
