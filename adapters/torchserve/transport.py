"""What the adapter asks of TorchServe's inference API, whichever protocol carries it."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class PredictCall:
    model: str
    version: str | None  # None: the model's default version
    body: bytes
    content_type: str
    seconds: float  # what is left of the caller's deadline


@dataclass(frozen=True, slots=True)
class Reply:
    body: bytes  # the handler's (first) response
    content_type: str = ""  # when the protocol says
    rest: AsyncGenerator[bytes, None] | None = None  # the parts that follow, if it streams


class Inference(Protocol):
    async def predict(self, call: PredictCall) -> Reply: ...

    async def close(self) -> None: ...
