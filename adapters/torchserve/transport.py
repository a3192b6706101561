"""What the adapter asks of TorchServe's inference API, whichever protocol carries it."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class PredictCall:
    model: str
    version: str | None  # None: the model's default version
    body: bytes
    content_type: str
    seconds: float  # what is left of the caller's deadline
    #: The client's headers for the handler (REST carries them; gRPC reaches no handler).
    headers: Mapping[str, str] = field(default_factory=dict)
    explain: bool = False  # `/explanations` rather than `/predictions`


@dataclass(frozen=True, slots=True)
class Reply:
    body: bytes  # the handler's (first) response
    content_type: str | None = None  # as TorchServe sent it; None when it sent none
    rest: AsyncGenerator[bytes, None] | None = None  # the parts that follow, if it streams
    status: int = 200  # the handler's choice, when the protocol carries it
    headers: Mapping[str, str] = field(default_factory=dict)  # the handler's, ditto


class Inference(Protocol):
    async def predict(self, call: PredictCall) -> Reply: ...

    async def close(self) -> None: ...
