"""In-process ONNX Runtime backend: a TF Serving-style model repository with dynamic batching."""

from adapters.onnx.adapter import OnnxAdapter

__all__ = ["OnnxAdapter"]
