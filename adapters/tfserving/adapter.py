"""`TfServingAdapter`: the pipeline's requests as TF Serving `Predict` calls. The signature
(needed to type TF Serving's JSON) is fetched with `GetModelMetadata` and cached until the
backend reports a different served version."""

from __future__ import annotations

from dataclasses import replace

from adapters.endpoints import GrpcBackend, GrpcPool, Rpc, rpc_probe
from adapters.tfserving.config import TfServingAdapterConfig
from gateway.backend import configured_models_available
from gateway.codecs import tensor_proto, tfserving_grpc
from gateway.errors import BadRequest
from gateway.metrics import GatewayMetrics
from gateway.model_config import ModelConfig
from gateway.types import (
    InferRequest,
    InferResponse,
    ModelMetadata,
    ModelRef,
    VersionStatus,
)
from protos.tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

_STATUS_TIMEOUT_S = 5.0


_PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
_predict = Rpc(_PREDICTION_SERVICE, "Predict",
               prediction_service_pb2_grpc.PredictionServiceStub)
_metadata = Rpc(_PREDICTION_SERVICE, "GetModelMetadata",
                prediction_service_pb2_grpc.PredictionServiceStub)
_status = Rpc("tensorflow.serving.ModelService", "GetModelStatus",
              model_service_pb2_grpc.ModelServiceStub)


class TfServingAdapter(GrpcBackend):
    def __init__(self, config: TfServingAdapterConfig, models: dict[str, ModelConfig],
                 metrics: GatewayMetrics | None = None) -> None:
        super().__init__(config.name, models, metrics)
        self._config = config
        # (model, version, label, signature) -> signature; dropped when the version moves on
        self._signatures: dict[ModelRef, ModelMetadata] = {}

    async def start(self) -> None:
        # the health probe asks for a configured model (TF Serving has no grpc.health.v1);
        # with none, an unknown name's NOT_FOUND still shows the server answers
        probe = get_model_status_pb2.GetModelStatusRequest(
            model_spec=tfserving_grpc.model_spec(ModelRef(min(self._models, default=""))))
        self._pool = GrpcPool(self.name, self._config.endpoints, self._config.pool,
                              probe=rpc_probe(_status, probe), metrics=self._metrics)

    async def infer(self, request: InferRequest) -> InferResponse:
        ref = request.ref
        proto = predict_pb2.PredictRequest(model_spec=tfserving_grpc.model_spec(ref, ref.signature),
                                           output_filter=list(request.outputs or ()))
        for name, array in request.inputs.items():
            tensor_proto.write_array(proto.inputs[name], array)
        try:
            reply = await self.pool.call(_predict, proto, seconds=request.context.remaining())
        except BadRequest:
            if request.decoder is not None:  # typed with a signature a new version may change
                self._forget_stale_signatures(ref, None)
            raise
        version = str(reply.model_spec.version.value)
        self._forget_stale_signatures(ref, version)
        outputs = {name: tensor_proto.to_array(t, name) for name, t in reply.outputs.items()}
        return InferResponse(model=ref.model, version=version, outputs=outputs)

    async def model_metadata(self, ref: ModelRef) -> ModelMetadata:
        cached = self._signatures.get(ref)
        if cached is not None:
            return cached
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=tfserving_grpc.model_spec(ref, ref.signature),
            metadata_field=["signature_def"])
        reply = await self.pool.call(_metadata, request, seconds=_STATUS_TIMEOUT_S)
        metadata = tfserving_grpc.metadata_from_response(reply, ref.signature)
        self._forget_stale_signatures(ref, metadata.version)
        self._signatures[ref] = metadata
        return metadata

    async def model_status(self, ref: ModelRef) -> list[VersionStatus]:
        request = get_model_status_pb2.GetModelStatusRequest(
            model_spec=tfserving_grpc.model_spec(replace(ref, signature=None)))
        reply = await self.pool.call(_status, request, seconds=_STATUS_TIMEOUT_S)
        return tfserving_grpc.statuses_from_response(reply)

    async def health(self) -> tuple[bool, str]:
        return await configured_models_available(self, self._models)

    def _forget_stale_signatures(self, ref: ModelRef, served_version: str | None) -> None:
        """Drop the cached signatures of what `ref` names (the latest version or a label, any
        signature name) once it serves another version; `None` drops them regardless."""
        if ref.version is not None:
            return  # a version's signature never changes
        stale = [r for r, m in self._signatures.items()
                 if r.model == ref.model and r.version is None and r.label == ref.label
                 and m.version != served_version]
        for stale_ref in stale:
            del self._signatures[stale_ref]
