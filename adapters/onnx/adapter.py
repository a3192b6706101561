"""`OnnxAdapter`: serves every model in its repository in-process, one dynamic batcher per
version. Versions are checked in a child process (`probe`), then loaded and swapped in while the
old one serves; loads run as tasks of their own, so one slow model never holds up another."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from adapters.batching import DynamicBatcher
from adapters.onnx.config import OnnxAdapterConfig
from adapters.onnx.probe import LoadLimits, check_model
from adapters.onnx.repository import MODEL_NAME, ModelRepository, VersionFile, wanted_versions
from adapters.onnx.session import (
    LoadedSession,
    ModelLoadError,
    SessionSettings,
    as_text,
    load_session,
)
from gateway.errors import BadRequest, Conflict, NotFound, Unavailable
from gateway.metrics import GatewayMetrics
from gateway.model_config import ModelConfig
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
    files: dict[int, VersionFile] = field(default_factory=dict)  # on disk, as last seen
    serving: dict[int, _Version] = field(default_factory=dict)
    status: dict[int, VersionStatus] = field(default_factory=dict)
    failed: dict[int, int] = field(default_factory=dict)  # version -> mtime that failed to load
    loading: dict[int, asyncio.Task[None]] = field(default_factory=dict)

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
        self._settings = SessionSettings(intra_op_threads=config.intra_op_threads,
                                         inter_op_threads=config.inter_op_threads,
                                         run_memory_bytes=config.run_memory_bytes)
        self._limits = LoadLimits(config.load_timeout_s, config.load_memory_bytes)
        self._models: dict[str, _Model] = {}
        # Held across a change on disk and the change of the serving map that goes with it
        # (milliseconds); never across a load.
        self._disk = asyncio.Lock()
        self._load_slots = asyncio.Semaphore(config.load_concurrency)
        self._uploading: set[str] = set()  # names of new models being checked
        self._poller: asyncio.Task[None] | None = None
        self._started = False
        self._at_start: set[str] = set()  # models the first scan found, until each settles
        self._settled = asyncio.Event()

    # lifecycle

    async def start(self) -> None:
        """Scan the repository and start loading; models serve as each becomes ready."""
        await self.sync()
        self._at_start = set(self._models)
        self._started = True
        self._check_settled()
        self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def startup_settled(self) -> None:
        """Wait until every model the first scan found has loaded the versions its policy
        wants, or they failed (for tools and tests that need the models, not just the
        gateway, up)."""
        await self._settled.wait()

    async def close(self) -> None:
        if self._poller:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        loads = [task for model in self._models.values() for task in model.loading.values()]
        for task in loads:
            task.cancel()
        await asyncio.gather(*loads, return_exceptions=True)
        for model in self._models.values():
            await asyncio.gather(*(v.batcher.close() for v in model.serving.values()))

    async def health(self) -> tuple[bool, str]:
        """Ready once the versions the first scan found are served or failed, and every
        model named in config serves a version."""
        if not self._started:
            return False, "repository not scanned yet"
        loading = self._loading_at_start()
        missing = [n for n in self._configured
                   if not self._models.get(n, _NO_MODEL).serving and n not in loading]
        reasons = []
        if loading:
            reasons.append(f"models loading: {', '.join(sorted(loading))}")
        if missing:
            reasons.append(f"models not loaded: {', '.join(sorted(missing))}")
        return not reasons, "; ".join(reasons) or "ok"

    def _loading_at_start(self) -> set[str]:
        return {name for name in self._at_start
                if (model := self._models.get(name)) is not None and model.loading}

    def _check_settled(self) -> None:
        if self._started and not self._loading_at_start():
            self._at_start.clear()  # later loads are swaps or new models: not a start any more
            self._settled.set()

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
                what = "is still loading" if model.loading else "has no version loaded"
                raise Unavailable(f"model {ref.model!r} {what}", retry_after_s=1)
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
        """Bring the serving set in line with the repository and the version policies: start
        the loads that are needed and retire what is no longer wanted (loads go on after)."""
        async with self._disk:
            found = await asyncio.to_thread(self._repository.scan)
            for name, files in found.items():
                model = self._models.setdefault(name, _Model(self._config_of(name)))
                model.files = files
                self._reconcile(name, model)
            for name in set(self._models) - set(found):
                self._forget(self._models.pop(name))

    def _reconcile(self, name: str, model: _Model) -> None:
        """Start loading the versions the policy wants; retire serving versions it no longer
        wants once the versions that replace them have loaded or failed."""
        loadable = {n for n, f in model.files.items() if model.failed.get(n) != f.mtime_ns}
        for number in sorted(wanted_versions(model.config, loadable) - set(model.serving)
                             - set(model.loading)):
            self._start_load(name, model, model.files[number])
        # Failed loads drop out of `loadable`, so the old version keeps serving.
        settled = loadable - set(model.loading)
        self._retire(model, set(model.serving) - wanted_versions(model.config, settled))

    def _start_load(self, name: str, model: _Model, file: VersionFile) -> None:
        model.status[file.version] = VersionStatus(str(file.version), "LOADING")
        model.loading[file.version] = asyncio.get_running_loop().create_task(
            self._load(name, model, file), name=f"load {name}/{file.version}")

    async def _load(self, name: str, model: _Model, file: VersionFile) -> None:
        number = file.version
        error = ""
        try:
            session: LoadedSession | None = await self._checked_load(
                file.path, f"model {name} version {number}")
        except ModelLoadError as exc:
            session, error = None, str(exc)
        except Exception as exc:  # e.g. no process could be started: still this load only
            log.exception("adapter %s: loading model %s version %d", self.name, name, number)
            session, error = None, f"load failed: {exc}"
        finally:
            model.loading.pop(number, None)
        if self._models.get(name) is not model:  # deleted while it loaded
            return
        current = model.files.get(number)
        if current is None or current.mtime_ns != file.mtime_ns:
            model.status[number] = VersionStatus(str(number), "END")  # reconcile may reload
        elif session is None:
            log.error("adapter %s: model %s version %d: %s", self.name, name, number, error)
            model.failed[number] = file.mtime_ns
            model.status[number] = VersionStatus(str(number), "END", error)
        else:
            self._serve(name, model, file, session)
            log.info("adapter %s: serving model %s version %d", self.name, name, number)
        self._reconcile(name, model)
        self._check_settled()

    async def _checked_load(self, path: Path, what: str) -> LoadedSession:
        """Check the file in a child process within the load limits, then load it here.
        Raises `ModelLoadError`."""
        async with self._load_slots:
            report = await check_model(path, self._settings, self._limits)
            session = await asyncio.to_thread(load_session, str(path), self._settings)
        log.info("adapter %s: %s checked: load and warm-up %.2f s, peak +%.0f MiB",
                 self.name, what, report.seconds, report.load_rss_bytes / 2**20)
        return session

    def _forget(self, model: _Model) -> None:
        """The model left the repository: stop its loads and retire every version."""
        for task in model.loading.values():
            task.cancel()
        self._retire(model, set(model.serving))

    async def create_model(self, name: str, data: bytes) -> VersionStatus:
        if not MODEL_NAME.match(name):
            raise BadRequest(f"invalid model name {name!r}: use letters, digits, '_', '.', '-'")
        if name in self._models or name in self._uploading:
            raise Conflict(f"model {name!r} exists; upload a new version with PUT")
        self._uploading.add(name)
        try:
            staged = await asyncio.to_thread(self._repository.stage, data)
            try:
                session = await self._validate(staged, f"new model {name}")
                async with self._disk:
                    on_disk = await asyncio.to_thread(self._repository.versions, name)
                    if name in self._models or on_disk:
                        raise Conflict(f"model {name!r} exists; upload a new version with PUT")
                    file = await self._place(staged, name, 1)
                    model = self._models[name] = _Model(self._config_of(name), files={1: file})
                    return self._serve(name, model, file, session)
            finally:
                await asyncio.to_thread(self._repository.discard, staged)
        finally:
            self._uploading.discard(name)

    async def add_version(self, name: str, data: bytes) -> VersionStatus:
        model = self._model(name)
        staged = await asyncio.to_thread(self._repository.stage, data)
        try:
            session = await self._validate(staged, f"new version of model {name}")
            async with self._disk:
                if self._models.get(name) is not model:
                    raise NotFound(f"model {name!r} was deleted during the upload")
                on_disk = await asyncio.to_thread(self._repository.versions, name)
                number = max([*on_disk, *model.status, 0]) + 1
                file = await self._place(staged, name, number)
                model.files = {**on_disk, number: file}
                status = self._serve(name, model, file, session)
                self._reconcile(name, model)
                return status
        finally:
            await asyncio.to_thread(self._repository.discard, staged)

    async def delete_model(self, name: str) -> None:
        async with self._disk:
            model = self._model(name)
            try:
                graveyard: Path | None = await asyncio.to_thread(self._repository.hide, name)
            except FileNotFoundError:  # already gone from disk; the next scan would drop it
                graveyard = None
            del self._models[name]
            for task in model.loading.values():
                task.cancel()
        self._check_settled()
        if graveyard is not None:
            await asyncio.to_thread(self._repository.purge, graveyard)
        await asyncio.gather(*(v.batcher.close() for v in model.serving.values()))

    async def _place(self, staged: Path, name: str, version: int) -> VersionFile:
        try:
            return await asyncio.to_thread(self._repository.place, staged, name, version)
        except FileExistsError:  # the same moment, through another worker sharing the disk
            raise Conflict(f"model {name!r} version {version} was uploaded at the same time "
                           "by another request; retry") from None

    async def _validate(self, staged: Path, what: str) -> LoadedSession:
        try:
            return await self._checked_load(staged, what)
        except ModelLoadError as exc:
            raise BadRequest(f"rejected upload: {exc}") from None

    def _serve(self, name: str, model: _Model, file: VersionFile,
               session: LoadedSession) -> VersionStatus:
        batching = model.config.batching or self._config.batching
        metadata = ModelMetadata(name=name, version=str(file.version), versions=(),
                                 platform=PLATFORM, inputs=session.inputs, outputs=session.outputs)
        batcher = DynamicBatcher(
            session.run, batching, name=f"{name}/{file.version}", batchable=session.batchable,
            observer=self._metrics.batch_metrics(name, str(file.version)) if self._metrics
            else None, inline=True)
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
