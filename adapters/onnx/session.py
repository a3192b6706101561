"""Loading one ONNX model version: the Runtime session (its memory capped by an arena of its
own), its signature read from the graph, and its warm-up run. The load probe's check server
imports it too, so it stays light: ONNX Runtime, numpy and the gateway's type vocabulary."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import onnxruntime as ort

from gateway import dtypes
from gateway.errors import BadRequest, PayloadTooLarge
from gateway.types import Tensors, TensorSpec


class ModelLoadError(Exception):
    """The bytes are not a model ONNX Runtime can load and run; the message says why."""


class OutOfMemory(ModelLoadError):
    """Loading or the warm-up ran out of memory: `arena` when the session's arena cap
    (`run_memory_bytes`) refused an allocation, otherwise the process itself had none left."""

    def __init__(self, message: str, *, arena: bool) -> None:
        super().__init__(message)
        self.arena = arena


@dataclass(frozen=True)
class SessionSettings:
    """How an adapter builds every session, in process and in the load probe alike."""

    intra_op_threads: int = 1
    inter_op_threads: int = 1
    run_memory_bytes: int = 0  # cap on the session's arena; 0: ONNX Runtime's default arena


@dataclass(frozen=True)
class LoadedSession:
    session: Any  # onnxruntime.InferenceSession (untyped library)
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    output_names: tuple[str, ...]
    run_memory_bytes: int = 0
    shrink: ArenaShrink | None = None  # with an arena of its own (run_memory_bytes)

    @property
    def batchable(self) -> bool:
        """Every input and output has a dynamic leading dim, so requests can be stacked."""
        return all(s.shape and s.shape[0] < 0 for s in self.inputs + self.outputs)

    def run(self, feeds: Tensors) -> Tensors:
        """Blocking; call off the event loop. String inputs must already be text (`as_text`)."""
        try:
            values = self.session.run(self.output_names, feeds,
                                      self.shrink.options() if self.shrink else None)
        except Exception as exc:
            if self.run_memory_bytes and _arena_refused(exc):
                raise PayloadTooLarge(
                    f"running this batch needs more than the model's run_memory_bytes = "
                    f"{self.run_memory_bytes} bytes of ONNX Runtime memory") from None
            raise
        return {name: _from_onnx(value, spec) for name, value, spec
                in zip(self.output_names, values, self.outputs, strict=True)}


def load_session(model: bytes | str, settings: SessionSettings) -> LoadedSession:
    """Create the session, read its signature and warm it up with one zero row. Blocking;
    bounded only by the caller (see `adapters.onnx.probe`)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.intra_op_threads
    options.inter_op_num_threads = settings.inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        session = _create(model, options, settings.run_memory_bytes)
    except Exception as exc:
        raise _load_error("not a loadable ONNX model", exc) from None
    loaded = LoadedSession(
        session=session,
        inputs=tuple(_spec(node) for node in session.get_inputs()),
        outputs=tuple(_spec(node) for node in session.get_outputs()),
        output_names=tuple(node.name for node in session.get_outputs()),
    )
    try:  # run_memory_bytes is not set yet: the error stays ONNX Runtime's, to classify
        loaded.run({spec.name: _zeros(spec) for spec in loaded.inputs})
    except Exception as exc:
        raise _load_error("model failed its warm-up run", exc) from None
    if not settings.run_memory_bytes:
        return loaded
    return replace(loaded, run_memory_bytes=settings.run_memory_bytes, shrink=ArenaShrink())


class ArenaShrink:
    """The run options that make a run return the arena's free regions (all but its first
    chunk) to the system when it ends, handed out at most once per `interval_s`: an arena
    keeps what it grew to, so without this one large batch would hold its memory for good;
    with it, the steady working set is allocated again at most once per interval."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self._interval_s = interval_s
        self._next = 0.0
        self._options = ort.RunOptions()
        self._options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def options(self) -> Any:
        now = time.monotonic()
        if now < self._next:
            return None
        self._next = now + self._interval_s  # two batches at once may both shrink: harmless
        return self._options


# ONNX Runtime caps an arena only when the arena is registered with its environment, and a
# session takes the environment's arena when it is created (a later registration replaces it
# for later sessions only). So each session gets an arena of its own: register, create, and
# register an unused one in its place, one session at a time in the process.
_CPU_ARENA = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0,
                               ort.OrtMemType.DEFAULT)
_ARENA_SWAP = threading.Lock()


def _create(model: bytes | str, options: Any, run_memory_bytes: int) -> Any:
    if not run_memory_bytes:
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    options.add_session_config_entry("session.use_env_allocators", "1")
    with _ARENA_SWAP:
        ort.create_and_register_allocator(_CPU_ARENA, ort.OrtArenaCfg(
            {"max_mem": run_memory_bytes}))
        try:
            return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        finally:
            # The environment keeps the last arena alive; an unused one holds no memory.
            ort.create_and_register_allocator(_CPU_ARENA, ort.OrtArenaCfg({"max_mem": 0}))


def _arena_refused(exc: BaseException) -> bool:
    """ONNX Runtime's arena at its `max_mem` (BFCArena's message; no error code tells)."""
    return "Available memory of" in str(exc)


def _load_error(what: str, exc: BaseException) -> ModelLoadError:
    message = f"{what}: {_first_line(exc)}"
    if _arena_refused(exc):
        return OutOfMemory(message, arena=True)
    text = str(exc)
    if isinstance(exc, MemoryError) or "Failed to allocate memory" in text or (
            "bad_alloc" in text or "bad allocation" in text):
        return OutOfMemory(message, arena=False)
    return ModelLoadError(message)


def _spec(node: Any) -> TensorSpec:
    dtype = dtypes.BY_ONNX.get(node.type)
    if dtype is None:
        raise ModelLoadError(f"{node.name!r} has type {node.type}, which the gateway cannot "
                             "carry (tensors of numbers, bool or string only)")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in node.shape)
    return TensorSpec(node.name, dtype, shape)


def _zeros(spec: TensorSpec) -> np.ndarray:
    shape = tuple(1 if d < 0 else d for d in spec.shape)
    if spec.dtype.is_bytes:
        return np.full(shape, "", dtype=object)
    return np.zeros(shape, dtype=spec.dtype.numpy)


_TO_BYTES = np.vectorize(lambda s: s.encode("utf-8"), otypes=[object])


def as_text(name: str, array: np.ndarray) -> np.ndarray:
    """ONNX Runtime's Python binding takes strings as `str`: BYTES inputs must be UTF-8."""
    if array.dtype != dtypes.BYTES_NUMPY:
        return array
    text = np.empty(array.shape, dtype=object)
    try:
        for index, value in np.ndenumerate(array):
            text[index] = value.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(f"input {name!r}: ONNX string tensors hold UTF-8 text; element "
                         f"{list(index)} is not valid UTF-8") from None
    return text


def _from_onnx(value: Any, spec: TensorSpec) -> np.ndarray:
    array = np.asarray(value)
    if spec.dtype.is_bytes:
        return _TO_BYTES(array) if array.size else array.astype(object)
    return array


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
