"""Pipeline step 3, rate limiting: may this call proceed now. The Redis limiter plugs in here."""

from __future__ import annotations

from typing import Protocol

from gateway.types import InferRequest


class RateLimiter(Protocol):
    async def check(self, request: InferRequest, cost: int) -> None:
        """Raise `RateLimited` when over the limit."""


class Unlimited:
    async def check(self, request: InferRequest, cost: int) -> None:
        return None
