"""Loading one ONNX model version: the Runtime session, its signature read from the graph, and
its warm-up run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from gateway import dtypes
from gateway.errors import BadRequest
from gateway.types import Tensors, TensorSpec


class ModelLoadError(Exception):
    """The bytes are not a model ONNX Runtime can load and run; the message says why."""


@dataclass(frozen=True)
class LoadedSession:
    session: Any  # onnxruntime.InferenceSession (untyped library)
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    output_names: tuple[str, ...]

    @property
    def batchable(self) -> bool:
        """Every input and output has a dynamic leading dim, so requests can be stacked."""
        return all(s.shape and s.shape[0] < 0 for s in self.inputs + self.outputs)

    def run(self, feeds: Tensors) -> Tensors:
        """Blocking; call off the event loop. String inputs must already be text (`as_text`)."""
        values = self.session.run(self.output_names, feeds)
        return {name: _from_onnx(value, spec) for name, value, spec
                in zip(self.output_names, values, self.outputs, strict=True)}


def load_session(model: bytes | str, *, intra_op_threads: int,
                 inter_op_threads: int) -> LoadedSession:
    """Create the session, read its signature and warm it up with one zero row."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelLoadError(f"not a loadable ONNX model: {_first_line(exc)}") from None
    loaded = LoadedSession(
        session=session,
        inputs=tuple(_spec(node) for node in session.get_inputs()),
        outputs=tuple(_spec(node) for node in session.get_outputs()),
        output_names=tuple(node.name for node in session.get_outputs()),
    )
    try:
        loaded.run({spec.name: _zeros(spec) for spec in loaded.inputs})
    except Exception as exc:
        raise ModelLoadError(f"model failed its warm-up run: {_first_line(exc)}") from None
    return loaded


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
