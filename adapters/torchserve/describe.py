"""`DescribeModel`'s JSON as the gateway's model status and metadata. A version is AVAILABLE
while a worker is READY. The signature is whatever the handler's `describe_handle` returns, if
it returns one in the v2 metadata form (`{"inputs": [{"name", "datatype", "shape"}], ...}`):
TorchServe itself knows no signatures."""

from __future__ import annotations

from typing import Any

from gateway import dtypes
from gateway.errors import BackendError
from gateway.types import ModelMetadata, TensorSpec, VersionStatus

PLATFORM = "torchserve"


def statuses(described: list[dict[str, Any]]) -> list[VersionStatus]:
    return [VersionStatus(str(d.get("modelVersion", "")), _state(d)) for d in described]


def _state(described: dict[str, Any]) -> str:
    workers = described.get("workers") or ()
    return "AVAILABLE" if any(w.get("status") == "READY" for w in workers) else "LOADING"


def metadata(model: str, described: dict[str, Any],
             every: list[dict[str, Any]]) -> ModelMetadata:
    """The version `described` (with its handler's metadata), among `every` version."""
    signature = described.get("customizedMetadata")
    if not isinstance(signature, dict):
        signature = {}
    return ModelMetadata(
        name=model, version=str(described.get("modelVersion", "")),
        versions=tuple(s.version for s in statuses(every)),
        platform=PLATFORM, inputs=_specs(signature.get("inputs"), model),
        outputs=_specs(signature.get("outputs"), model))


def _specs(declared: Any, model: str) -> tuple[TensorSpec, ...]:
    if declared is None:
        return ()
    try:
        return tuple(TensorSpec(str(s["name"]), dtypes.BY_V2[s["datatype"]],
                                tuple(int(d) for d in s["shape"])) for s in declared)
    except (TypeError, KeyError, ValueError):
        raise BackendError(f"model {model!r}: its handler's describe_handle declares "
                           f"{declared!r:.120}, not v2 tensor metadata "
                           "([{\"name\", \"datatype\", \"shape\"}])") from None
