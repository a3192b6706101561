"""`V2Adapter`: the pipeline's requests as Open Inference Protocol v2 `ModelInfer` calls to
Triton, KServe or MLServer. The model's signature comes from the server (`ModelMetadata`,
kept for `SIGNATURE_TTL_S`): it types TF Serving's JSON, and inputs are checked against it
before they leave, so a wrong shape or datatype is a 400 naming the input whichever server
is behind (MLServer's runtimes fail them as internal errors)."""

from __future__ import annotations

import asyncio
import time

from adapters.endpoints import GrpcBackend, GrpcPool, Rpc, rpc_probe
from adapters.v2 import messages
from adapters.v2.config import V2AdapterConfig
from gateway.backend import configured_models_available
from gateway.codecs import v2_grpc
from gateway.codecs.budget import DecodeBudget
from gateway.errors import BackendError, BadRequest, GatewayError, NotFound
from gateway.metrics import GatewayMetrics
from gateway.model_config import ModelConfig
from gateway.signatures import check_inputs
from gateway.types import InferRequest, InferResponse, ModelMetadata, ModelRef, VersionStatus
from protos.inference import grpc_service_pb2 as pb
from protos.inference import grpc_service_pb2_grpc

#: How long a model's signature is trusted before it is asked again; a backend's 400 drops it
#: at once (a new version may have changed it).
SIGNATURE_TTL_S = 10.0
_STATUS_TIMEOUT_S = 5.0

_SERVICE = "inference.GRPCInferenceService"
_STUB = grpc_service_pb2_grpc.GRPCInferenceServiceStub
_infer = Rpc(_SERVICE, "ModelInfer", _STUB)
_metadata = Rpc(_SERVICE, "ModelMetadata", _STUB)
_model_ready = Rpc(_SERVICE, "ModelReady", _STUB)
_server_ready = Rpc(_SERVICE, "ServerReady", _STUB)
_server_live = Rpc(_SERVICE, "ServerLive", _STUB)


class V2Adapter(GrpcBackend):
    def __init__(self, config: V2AdapterConfig, models: dict[str, ModelConfig],
                 metrics: GatewayMetrics | None = None) -> None:
        super().__init__(config.name, models, metrics)
        self._config = config
        # (model, version asked for) -> (expiry, signature)
        self._signatures: dict[tuple[str, str], tuple[float, ModelMetadata]] = {}
        # a reply holds no more elements than its bytes: the channel's limit bounds them
        limit = config.pool.max_message_bytes
        self._reply_budget = DecodeBudget(max_tensor_elements=limit, max_request_elements=limit,
                                          max_batch_rows=limit, max_bytes_elements=limit // 4)

    async def start(self) -> None:
        # liveness, not readiness, for endpoints without grpc.health.v1: a strict Triton is
        # not ready while one model failed, yet serves the others
        self._pool = GrpcPool(self.name, self._config.endpoints, self._config.pool,
                              probe=rpc_probe(_server_live, pb.ServerLiveRequest(),
                                              lambda reply: bool(reply.live)),
                              metrics=self._metrics)

    async def infer(self, request: InferRequest) -> InferResponse:
        model, version = request.ref.model, self._version(request.ref)
        signature = await self._signature(
            model, version, min(request.context.remaining(), _STATUS_TIMEOUT_S))
        if signature.inputs:  # MLServer declares none unless its model-settings do
            check_inputs(signature, request.inputs)
        try:
            reply = await self.pool.call(_infer, messages.infer_request(request, version),
                                         seconds=request.context.remaining())
        except BadRequest:
            self._signatures.pop((model, version), None)
            raise
        try:
            outputs = v2_grpc.decode_outputs(reply, self._reply_budget)
        except GatewayError as exc:
            raise BackendError(f"backend {self.name}: model {model!r} answered outputs the "
                               f"gateway cannot read: {exc.message}") from None
        return InferResponse(model=model, version=reply.model_version or version,
                             outputs=outputs, id=reply.id or None)

    async def model_metadata(self, ref: ModelRef) -> ModelMetadata:
        return await self._signature(ref.model, self._version(ref))

    async def model_status(self, ref: ModelRef) -> list[VersionStatus]:
        """The versions the server lists (or the one asked for), each as ready as `ModelReady`
        says; a model it does not know is `NotFound` (metadata says so on every server)."""
        version = self._version(ref)
        described = await self.pool.call(
            _metadata, pb.ModelMetadataRequest(name=ref.model, version=version),
            seconds=_STATUS_TIMEOUT_S)
        versions = [version] if version else list(described.versions) or [""]
        replies = await asyncio.gather(*(self.pool.call(
            _model_ready, pb.ModelReadyRequest(name=ref.model, version=v),
            seconds=_STATUS_TIMEOUT_S) for v in versions))
        return [VersionStatus(v, "AVAILABLE" if r.ready else "LOADING")
                for v, r in zip(versions, replies, strict=True)]

    async def health(self) -> tuple[bool, str]:
        if self._models:
            return await configured_models_available(self, self._models)
        try:
            reply = await self.pool.call(_server_ready, pb.ServerReadyRequest(),
                                         seconds=_STATUS_TIMEOUT_S)
        except GatewayError as exc:
            return False, exc.message
        return (True, "ok") if reply.ready else (False, f"backend {self.name}: not ready")

    async def _signature(self, model: str, version: str,
                         seconds: float = _STATUS_TIMEOUT_S) -> ModelMetadata:
        cached = self._signatures.get((model, version))
        now = time.monotonic()
        if cached is not None and now < cached[0]:
            return cached[1]
        reply = await self.pool.call(_metadata, pb.ModelMetadataRequest(name=model,
                                                                        version=version),
                                     seconds=seconds)
        signature = messages.metadata(reply, version)
        self._signatures[(model, version)] = (now + SIGNATURE_TTL_S, signature)
        return signature

    def _version(self, ref: ModelRef) -> str:
        """The version asked for, by number or by a label of the model's config; "" for the
        server's default."""
        if ref.label is None:
            return ref.version or ""
        model = self._models.get(ref.model)
        if model is None or ref.label not in model.labels:
            raise NotFound(f"model {ref.model!r} has no label {ref.label!r}")
        return str(model.labels[ref.label])
