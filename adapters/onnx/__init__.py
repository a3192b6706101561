"""In-process ONNX Runtime backend: a TF Serving-style model repository with dynamic batching.

`OnnxAdapter` is imported on first use (PEP 562): the load probe's child process imports
`adapters.onnx.session` alone, without the adapter's batcher, metrics and tracing."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from adapters.onnx.adapter import OnnxAdapter

__all__ = ["OnnxAdapter"]


def __getattr__(name: str) -> object:
    if name == "OnnxAdapter":
        from adapters.onnx.adapter import OnnxAdapter

        return OnnxAdapter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
