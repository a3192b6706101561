"""`TorchServeAdapter`: the pipeline's requests as calls to TorchServe handlers. A request that
carries the client's own body (the TorchServe dialect) passes it through and relays the
handler's reply as it is, streamed parts included; one that carries tensors sends them as a
JSON object of named lists and reads the handler's JSON reply back into tensors."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from adapters.torchserve import describe
from adapters.torchserve.config import TorchServeAdapterConfig
from adapters.torchserve.grpc_inference import GrpcInference
from adapters.torchserve.management import TorchServeManagement
from adapters.torchserve.rest_inference import RestInference
from adapters.torchserve.transport import Inference, PredictCall
from gateway.backend import configured_models_available
from gateway.codecs import torchserve_json
from gateway.errors import BackendError, BadRequest, GatewayError, NotFound
from gateway.metrics import GatewayMetrics
from gateway.model_config import ModelConfig
from gateway.types import (
    InferRequest,
    InferResponse,
    ModelMetadata,
    ModelRef,
    Tensors,
    VersionStatus,
)

log = logging.getLogger(__name__)
JSON = "application/json"
#: How long a handler's declared signature is trusted: asking again runs the handler.
SIGNATURE_TTL_S = 10.0


class TorchServeAdapter:
    passes_body = True
    remote = True

    def __init__(self, config: TorchServeAdapterConfig, models: dict[str, ModelConfig],
                 metrics: GatewayMetrics | None = None) -> None:
        self.name = config.name
        self._config = config
        self._models = models
        self._metrics = metrics
        self._inference: Inference | None = None
        self._management: TorchServeManagement | None = None
        self._discovered: frozenset[str] = frozenset()
        self._discovery: asyncio.Task[None] | None = None
        self._signatures: dict[ModelRef, tuple[float, ModelMetadata]] = {}

    async def start(self) -> None:
        self._inference = (GrpcInference(self._config, self._metrics)
                           if self._config.protocol == "grpc"
                           else RestInference(self._config, self._metrics))
        self._management = TorchServeManagement(self._config, self._metrics)
        self._discovery = asyncio.get_running_loop().create_task(self._discover())

    async def close(self) -> None:
        if self._discovery is not None:
            self._discovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._discovery
        if self._inference is not None:
            await self._inference.close()
        if self._management is not None:
            await self._management.close()

    @property
    def inference(self) -> Inference:
        if self._inference is None:
            raise GatewayError(f"adapter {self.name} is not started")
        return self._inference

    @property
    def management(self) -> TorchServeManagement:
        if self._management is None:
            raise GatewayError(f"adapter {self.name} is not started")
        return self._management

    def serves(self, model: str) -> bool:
        return model in self._models or model in self._discovered

    def model_names(self) -> list[str]:
        return sorted(self._discovered.union(self._models))

    async def infer(self, request: InferRequest) -> InferResponse:
        ref = request.ref
        version = self._version(ref)
        passed = request.body is not None
        reply = await self.inference.predict(PredictCall(
            ref.model, version,
            request.body if request.body is not None else torchserve_json.encode(request.inputs),
            request.content_type if passed else JSON, request.context.remaining(),
            headers=request.headers, explain=request.explain))
        # TorchServe does not say which version answered: only the one asked for is known
        if passed:
            return InferResponse(ref.model, version or "", {}, body=reply.body,
                                 content_type=reply.content_type, chunks=reply.rest,
                                 status=reply.status, headers=reply.headers)
        data = reply.body if reply.rest is None else b"".join(
            [reply.body, *[part async for part in reply.rest]])
        if reply.status >= 400:  # the handler chose a failure status and wrote its own body
            raise BackendError(data.decode("utf-8", "replace")[:200] or f"HTTP {reply.status}",
                               status=reply.status)
        outputs = _requested(torchserve_json.decode_reply(data), request.outputs, ref.model)
        return InferResponse(ref.model, version or "", outputs)

    async def model_metadata(self, ref: ModelRef) -> ModelMetadata:
        cached = self._signatures.get(ref)
        if cached is not None and time.monotonic() < cached[0]:
            return cached[1]
        version = self._version(ref) or ""
        every, own = await asyncio.gather(self.management.describe(ref.model, "all"),
                                          self._described_by_handler(ref.model, version))
        metadata = describe.metadata(ref.model, own, every)
        self._signatures[ref] = (time.monotonic() + SIGNATURE_TTL_S, metadata)
        return metadata

    async def _described_by_handler(self, model: str, version: str) -> dict[str, Any]:
        """The version's description with its handler's metadata, or without if the handler
        fails to describe itself (most handlers never try)."""
        try:
            return (await self.management.describe(model, version, customized=True))[0]
        except BackendError as exc:
            log.info("model %s: no handler metadata (%s)", model, exc.message)
            return (await self.management.describe(model, version))[0]

    async def model_status(self, ref: ModelRef) -> list[VersionStatus]:
        return describe.statuses(await self.management.describe(
            ref.model, self._version(ref) or "all"))

    async def health(self) -> tuple[bool, str]:
        return await configured_models_available(self, self._models)

    def _version(self, ref: ModelRef) -> str | None:
        """The version asked for, by number or label; None for TorchServe's default."""
        if ref.label is None:
            return ref.version
        model = self._models.get(ref.model)
        if model is None or ref.label not in model.labels:
            raise NotFound(f"model {ref.model!r} has no label {ref.label!r}")
        return str(model.labels[ref.label])

    async def _discover(self) -> None:
        """Keeps the names TorchServe holds, for routes not named in config."""
        while True:
            try:
                self._discovered = frozenset(await self.management.list_models())
            except GatewayError as exc:
                log.debug("TorchServe backend %s: ListModels failed: %s", self.name, exc.message)
            await asyncio.sleep(self._config.discovery_interval_s)


def _requested(outputs: Tensors, names: tuple[str, ...] | None, model: str) -> Tensors:
    if names is None:
        return outputs
    missing = [n for n in names if n not in outputs]
    if missing:
        raise BadRequest(f"model {model!r} answered no output named {', '.join(missing)} "
                         f"(has: {', '.join(outputs)})")
    return {name: outputs[name] for name in names}
