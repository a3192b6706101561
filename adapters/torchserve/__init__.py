"""TorchServe backends: its gRPC (or REST) inference API and its gRPC management API."""

from adapters.torchserve.adapter import TorchServeAdapter

__all__ = ["TorchServeAdapter"]
