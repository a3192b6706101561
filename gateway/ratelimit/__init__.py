"""Pipeline step 3, rate limiting: may this call proceed now. `GcraLimiter`, its buckets in
Redis when `[redis]` is configured, else in this process's memory (never off: see
`limits_config`); `factory.build_limiter` builds it. `Unlimited` is for pipelines built
without limits (tests, tools)."""

from __future__ import annotations

from typing import Protocol

from gateway.types import InferRequest


class RateLimiter(Protocol):
    async def check(self, request: InferRequest, cost: int) -> None:
        """Raise `RateLimited` when over the limit (`Unavailable` when it cannot tell and a
        rule says to fail closed); set `RateLimit-*` reply headers."""

    async def close(self) -> None:
        """Release connections; the gateway calls it at shutdown."""


class Unlimited:
    async def check(self, request: InferRequest, cost: int) -> None:
        return None

    async def close(self) -> None:
        return None
