"""A rate-limit rule as the policy files state it; the limiter enforces a set of them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LimitRule:
    name: str
    models: tuple[str, ...]  # model names; "*" matches every model
    key: str = "sub"  # the principal claim requests are counted by ("sub", "tenant", ...)
    rate: float = 10.0  # requests (or rows) per period
    period_s: float = 1.0
    burst: int = 10  # how many may arrive at once
    cost: str = "request"  # "request": 1 per request; "rows": the rows in the batch
    on_redis_error: str = "open"  # "open": allow and count it; "closed": 503

    def applies_to(self, model: str) -> bool:
        return "*" in self.models or model in self.models
