"""`OnnxAdapter`: serves every model in its repository in-process, one dynamic batcher per
version. New versions on disk are loaded, warmed up and swapped in while the old one serves."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from dataclasses import dataclass, field, replace

from adapters.batching import DynamicBatcher
from adapters.onnx.repository import MODEL_NAME, ModelRepository, VersionFile, wanted_versions
from adapters.onnx.session import LoadedSession, ModelLoadError, as_text, load_session
from gateway.config import ModelConfig, OnnxAdapterConfig
from gateway.errors import BadRequest, Conflict, NotFound, Unavailable
from gateway.metrics import GatewayMetrics
from gateway.signatures import check_inputs, check_outputs
from gateway.telemetry import spans
from gateway.types import (
    InferRequest,
    InferResponse,
    ModelMetadata,
    ModelRef,
    VersionStatus,
)

log = logging.getLogger(__name__)
PLATFORM = "onnxruntime_onnx"


@dataclass(eq=False)
class _Version:
    file: VersionFile
    session: LoadedSession
    metadata: ModelMetadata
    batcher: DynamicBatcher

    @functools.cached_property
    def span_attributes(self) -> dict[str, str]:
        return {"gateway.model": self.metadata.name,
                "gateway.model.version": self.metadata.version}


@dataclass(eq=False)
class _Model:
    config: ModelConfig
    serving: dict[int, _Version] = field(default_factory=dict)
    status: dict[int, VersionStatus] = field(default_factory=dict)
    failed: dict[int, int] = field(default_factory=dict)  # version -> mtime that failed to load

    def versions(self) -> tuple[str, ...]:
        return tuple(str(v) for v in sorted(self.serving))


class OnnxAdapter:
    def __init__(self, config: OnnxAdapterConfig, models: dict[str, ModelConfig],
                 metrics: GatewayMetrics | None = None) -> None:
        self.name = config.name
        self._config = config
        self._metrics = metrics
        self._configured = models
        self._repository = ModelRepository(config.repository)
        self._models: dict[str, _Model] = {}
        self._lock = asyncio.Lock()  # one writer of the repository and the serving map
        self._poller: asyncio.Task[None] | None = None
        self._started = False

    # lifecycle

    async def start(self) -> None:
        await self.sync()
        self._started = True
        self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def close(self) -> None:
        if self._poller:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        for model in self._models.values():
            await asyncio.gather(*(v.batcher.close() for v in model.serving.values()))

    async def health(self) -> tuple[bool, str]:
        if not self._started:
            return False, "repository not scanned yet"
        missing = [n for n in self._configured if not self._models.get(n, _NO_MODEL).serving]
        if missing:
            return False, f"models not loaded: {', '.join(sorted(missing))}"
        return True, "ok"

    # serving

    def serves(self, model: str) -> bool:
        return model in self._models

    def model_names(self) -> list[str]:
        return sorted(self._models)

    def queue_depths(self) -> dict[tuple[str, str], int]:
        """(model, version) -> requests waiting in that version's batcher."""
        return {(name, str(number)): version.batcher.depth
                for name, model in self._models.items()
                for number, version in model.serving.items()}

    async def infer(self, request: InferRequest) -> InferResponse:
        name, version = self._resolve(request.ref)
        check_inputs(version.metadata, request.inputs)
        check_outputs(version.metadata, request.outputs)
        inputs = {name: as_text(name, array) for name, array in request.inputs.items()}
        with spans.step("onnx", version.span_attributes, current=True):  # batches link to it
            outputs = await version.batcher.submit(inputs, request.context.deadline)
        if request.outputs:
            outputs = {n: outputs[n] for n in request.outputs}
        return InferResponse(model=name, version=str(version.file.version), outputs=outputs)

    async def model_metadata(self, ref: ModelRef) -> ModelMetadata:
        name, version = self._resolve(ref)
        return replace(version.metadata, versions=self._models[name].versions())

    async def model_status(self, ref: ModelRef) -> list[VersionStatus]:
        model = self._model(ref.model)
        if ref.version is None and ref.label is None:
            return [model.status[v] for v in sorted(model.status)]
        number = model.config.labels.get(ref.label) if ref.label else (
            int(ref.version) if ref.version and ref.version.isdigit() else None)
        if number not in model.status:
            what = f"label {ref.label!r}" if ref.label else f"version {ref.version}"
            raise NotFound(f"model {ref.model!r} has no {what}")
        return [model.status[number]]

    def _model(self, name: str) -> _Model:
        model = self._models.get(name)
        if model is None:
            raise NotFound(f"model {name!r} not found")
        return model

    def _resolve(self, ref: ModelRef) -> tuple[str, _Version]:
        model = self._model(ref.model)
        if ref.label is not None:
            number = model.config.labels.get(ref.label)
            if number is None:
                raise NotFound(f"model {ref.model!r} has no label {ref.label!r}")
            where = f"label {ref.label!r} (version {number})"
        elif ref.version is not None:
            if not ref.version.isdigit():
                raise NotFound(f"model {ref.model!r} has no version {ref.version!r}")
            number, where = int(ref.version), f"version {ref.version}"
        else:
            if not model.serving:
                raise Unavailable(f"model {ref.model!r} has no version loaded", retry_after_s=1)
            number, where = max(model.serving), "latest"
        version = model.serving.get(number)
        if version is None:
            state = model.status.get(number)
            if state is not None and state.state in ("START", "LOADING"):
                raise Unavailable(f"model {ref.model!r} {where} is still loading",
                                  retry_after_s=1)
            raise NotFound(f"model {ref.model!r} {where} is not being served")
        return ref.model, version

    # repository changes

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._config.poll_interval_s)
            try:
                await self.sync()
            except Exception:
                log.exception("adapter %s: repository poll failed", self.name)

    async def sync(self) -> None:
        """Bring the serving set in line with the repository and the version policies."""
        async with self._lock:
            found = await asyncio.to_thread(self._repository.scan)
            for name, files in found.items():
                model = self._models.setdefault(name, _Model(self._config_of(name)))
                for number in sorted(self._wanted(model, files) - set(model.serving)):
                    await self._load(name, model, files[number])
                # Failed loads drop out of `_wanted`, so the old version keeps serving.
                self._retire(model, set(model.serving) - self._wanted(model, files))
            for name in set(self._models) - set(found):
                model = self._models.pop(name)
                self._retire(model, set(model.serving))

    @staticmethod
    def _wanted(model: _Model, files: dict[int, VersionFile]) -> set[int]:
        loadable = {n for n, f in files.items() if model.failed.get(n) != f.mtime_ns}
        return wanted_versions(model.config, loadable)

    async def create_model(self, name: str, data: bytes) -> VersionStatus:
        if not MODEL_NAME.match(name):
            raise BadRequest(f"invalid model name {name!r}: use letters, digits, '_', '.', '-'")
        async with self._lock:
            if name in self._models:
                raise Conflict(f"model {name!r} exists; upload a new version with PUT")
            session = await self._validate(data)
            model = self._models[name] = _Model(self._config_of(name))
            file = await asyncio.to_thread(self._repository.write, name, 1, data)
            return self._serve(name, model, file, session)

    async def add_version(self, name: str, data: bytes) -> VersionStatus:
        async with self._lock:
            model = self._model(name)
            session = await self._validate(data)
            on_disk = (await asyncio.to_thread(self._repository.scan)).get(name, {})
            number = max([*on_disk, *model.status, 0]) + 1
            file = await asyncio.to_thread(self._repository.write, name, number, data)
            status = self._serve(name, model, file, session)
            self._retire(model, set(model.serving) - wanted_versions(model.config,
                                                                      set(model.serving)))
            return status

    async def delete_model(self, name: str) -> None:
        async with self._lock:
            model = self._model(name)
            await asyncio.to_thread(self._repository.remove, name)
            del self._models[name]
        await asyncio.gather(*(v.batcher.close() for v in model.serving.values()))

    async def _validate(self, data: bytes) -> LoadedSession:
        try:
            return await asyncio.to_thread(
                load_session, data, intra_op_threads=self._config.intra_op_threads,
                inter_op_threads=self._config.inter_op_threads)
        except ModelLoadError as exc:
            raise BadRequest(f"rejected upload: {exc}") from None

    async def _load(self, name: str, model: _Model, file: VersionFile) -> None:
        model.status[file.version] = VersionStatus(str(file.version), "LOADING")
        try:
            session = await asyncio.to_thread(
                load_session, str(file.path), intra_op_threads=self._config.intra_op_threads,
                inter_op_threads=self._config.inter_op_threads)
        except ModelLoadError as exc:
            log.error("adapter %s: model %s version %d: %s", self.name, name, file.version, exc)
            model.failed[file.version] = file.mtime_ns
            model.status[file.version] = VersionStatus(str(file.version), "END", str(exc))
            return
        self._serve(name, model, file, session)
        log.info("adapter %s: serving model %s version %d", self.name, name, file.version)

    def _serve(self, name: str, model: _Model, file: VersionFile,
               session: LoadedSession) -> VersionStatus:
        batching = model.config.batching or self._config.batching
        metadata = ModelMetadata(name=name, version=str(file.version), versions=(),
                                 platform=PLATFORM, inputs=session.inputs, outputs=session.outputs)
        batcher = DynamicBatcher(
            session.run, batching, name=f"{name}/{file.version}", batchable=session.batchable,
            observer=self._metrics.batch_metrics(name, str(file.version)) if self._metrics
            else None)
        model.serving[file.version] = _Version(file, session, metadata, batcher)
        model.failed.pop(file.version, None)
        status = model.status[file.version] = VersionStatus(str(file.version), "AVAILABLE")
        return status

    def _retire(self, model: _Model, numbers: set[int]) -> None:
        """Stop routing to these versions; their queued requests still finish."""
        for number in numbers:
            version = model.serving.pop(number)
            model.status[number] = VersionStatus(str(number), "END")
            asyncio.get_running_loop().create_task(version.batcher.close())
            log.info("model %s: version %d retired", version.metadata.name, number)

    def _config_of(self, name: str) -> ModelConfig:
        return self._configured.get(name) or ModelConfig(name=name, adapter=self.name)


_NO_MODEL = _Model(ModelConfig(name="", adapter=""))
