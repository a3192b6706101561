"""The contract every backend kind meets (the core owns it, so the pipeline and routing import
nothing from `adapters/`): its config's identity, the `Adapter` the pipeline calls, and the
optional `ModelStore` the management API uses. The kinds themselves are listed in
`adapters/kinds.py`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

from gateway.errors import GatewayError
from gateway.types import InferRequest, InferResponse, ModelMetadata, ModelRef, VersionStatus


class BackendConfig(Protocol):
    """What every kind's config dataclass (`adapters/<kind>/config.py`) has."""

    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> str: ...


class Adapter(Protocol):
    name: str

    async def start(self) -> None:
        """Connect or load; may leave models not ready (see `health`)."""

    async def close(self) -> None:
        """Finish in-flight work and release resources."""

    async def infer(self, request: InferRequest) -> InferResponse:
        """Run `request.inputs` (already decoded) on the model it names."""

    async def model_metadata(self, ref: ModelRef) -> ModelMetadata:
        """Signature of the version `ref` resolves to; raises `NotFound`."""

    async def model_status(self, ref: ModelRef) -> list[VersionStatus]:
        """Every version's state (or the one `ref` names); raises `NotFound`."""

    async def health(self) -> tuple[bool, str]:
        """Ready to serve every model it is configured for, and why not."""

    def serves(self, model: str) -> bool:
        """Whether this backend holds `model`, for routes not named in config."""

    def model_names(self) -> list[str]:
        """The models this backend serves now."""


def passes_body(adapter: Adapter) -> bool:
    """Whether `adapter` sends `InferRequest.body` to its backend as it is (a TorchServe
    handler parses the client's own bytes), so the pipeline does not decode such requests. An
    adapter says so with a class attribute `passes_body = True` (an attribute read, where an
    `isinstance` on a runtime-checkable protocol costs ~8 µs per request on Python 3.11)."""
    return getattr(adapter, "passes_body", False) is True


def is_remote(adapter: Adapter) -> bool:
    """Whether `adapter`'s models run on other servers (a class attribute `remote = True`).
    Such a backend being down is the same for every replica, so it does not make this one
    unready (`Gateway.readiness`)."""
    return getattr(adapter, "remote", False) is True


@runtime_checkable
class ModelStore(Protocol):
    """An adapter whose models the management API may add, replace and delete."""

    name: str

    async def create_model(self, name: str, data: bytes) -> VersionStatus:
        """Store `data` as version 1 of a new model, serving once loaded and warmed up."""

    async def add_version(self, name: str, data: bytes) -> VersionStatus:
        """Store `data` as the next version; the old version serves until it is ready."""

    async def delete_model(self, name: str) -> None:
        """Stop routing to `name`; requests already admitted finish."""


async def configured_models_available(adapter: Adapter, names: Iterable[str]
                                      ) -> tuple[bool, str]:
    """A remote backend's readiness: every model configured for it has a version AVAILABLE
    (asked of the backend itself, so a backend that is down or lost a model shows up)."""
    missing = []
    for name in names:
        try:
            statuses = await adapter.model_status(ModelRef(name))
        except GatewayError as exc:
            missing.append(f"{name} ({exc.message})")
            continue
        if not any(s.state == "AVAILABLE" for s in statuses):
            missing.append(f"{name} (no version AVAILABLE)")
    return (not missing, f"models not available: {', '.join(missing)}" if missing else "ok")
