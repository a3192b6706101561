"""TF Serving's gRPC API (`tensorflow.serving.PredictionService`, `ModelService`), so existing
`tensorflow_serving.apis` clients work against the gateway unchanged."""

from __future__ import annotations

from dataclasses import replace

import grpc

from gateway.codecs import tensor_proto, tfserving_grpc
from gateway.errors import BadRequest
from gateway.grpc.calls import GrpcCalls
from gateway.pipeline import Pipeline
from gateway.types import InferRequest, RequestContext
from protos.tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

FRONTEND = "tfserving-grpc"


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, pipeline: Pipeline, calls: GrpcCalls) -> None:
        self._pipeline = pipeline
        self._calls = calls

    async def Predict(self, request: predict_pb2.PredictRequest,
                      context: grpc.aio.ServicerContext) -> predict_pb2.PredictResponse:
        async def predict(call: RequestContext) -> predict_pb2.PredictResponse:
            spec = request.model_spec
            ref = replace(tfserving_grpc.ref_of(spec), signature=spec.signature_name or None)
            inputs = await tensor_proto.decode_inputs_async(request.inputs,
                                                            budget=self._calls.budget)
            response = await self._pipeline.infer(InferRequest(
                ref=ref, context=call, inputs=inputs,
                outputs=tuple(request.output_filter) or None))
            reply = predict_pb2.PredictResponse()
            reply.model_spec.name = response.model
            if response.version.isdigit():  # TorchServe's are free text, or unknown ("")
                reply.model_spec.version.value = int(response.version)
            reply.model_spec.signature_name = spec.signature_name or \
                tfserving_grpc.DEFAULT_SIGNATURE
            for name, array in response.outputs.items():
                tensor_proto.write_array(reply.outputs[name], array)
            return reply

        return await self._calls.run_infer(context, FRONTEND, request.model_spec.name, predict)

    async def GetModelMetadata(
            self, request: get_model_metadata_pb2.GetModelMetadataRequest,
            context: grpc.aio.ServicerContext) -> get_model_metadata_pb2.GetModelMetadataResponse:
        async def metadata(call: RequestContext
                           ) -> get_model_metadata_pb2.GetModelMetadataResponse:
            fields = set(request.metadata_field)
            if fields - {"signature_def"}:
                raise BadRequest(f"metadata_field {sorted(fields)}: only 'signature_def' is "
                                 "supported")
            spec = request.model_spec
            ref = replace(tfserving_grpc.ref_of(spec), signature=spec.signature_name or None)
            found = await self._pipeline.metadata(ref, call)
            return tfserving_grpc.metadata_response(found, spec.signature_name or None)

        return await self._calls.run(context, FRONTEND, request.model_spec.name, metadata)

    async def Classify(
            self, request: classification_pb2.ClassificationRequest,
            context: grpc.aio.ServicerContext) -> classification_pb2.ClassificationResponse:
        return await self._calls.run(context, FRONTEND, request.model_spec.name,
                                     _predict_only(request.model_spec.name, "Classify"))

    async def Regress(
            self, request: regression_pb2.RegressionRequest,
            context: grpc.aio.ServicerContext) -> regression_pb2.RegressionResponse:
        return await self._calls.run(context, FRONTEND, request.model_spec.name,
                                     _predict_only(request.model_spec.name, "Regress"))


def _predict_only(model: str, verb: str):  # type: ignore[no-untyped-def]
    async def refuse(call: RequestContext) -> None:
        raise BadRequest(f"model {model!r} exposes no {verb.lower()} signature: the gateway "
                         "serves Predict only")
    return refuse


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, pipeline: Pipeline, calls: GrpcCalls) -> None:
        self._pipeline = pipeline
        self._calls = calls

    async def GetModelStatus(
            self, request: get_model_status_pb2.GetModelStatusRequest,
            context: grpc.aio.ServicerContext) -> get_model_status_pb2.GetModelStatusResponse:
        async def status(call: RequestContext) -> get_model_status_pb2.GetModelStatusResponse:
            found = await self._pipeline.status(tfserving_grpc.ref_of(request.model_spec), call)
            return tfserving_grpc.status_response(found)

        return await self._calls.run(context, FRONTEND, request.model_spec.name, status)
