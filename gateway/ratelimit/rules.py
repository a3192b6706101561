"""A rate-limit rule as the policy files state it; the limiter enforces a set of them."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.types import Principal

COSTS = ("request", "rows")
ON_REDIS_ERROR = ("open", "closed")


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

    def __post_init__(self) -> None:
        # The limiter's arithmetic divides by these; a bad rule must fail where it is built.
        if not self.name:
            raise ValueError("a limit rule needs a name")
        if self.rate <= 0 or self.period_s <= 0:
            raise ValueError(f"limit {self.name!r}: rate and period_s must be > 0")
        if self.burst < 1:
            raise ValueError(f"limit {self.name!r}: burst must be >= 1")
        if self.cost not in COSTS:
            raise ValueError(f"limit {self.name!r}: cost must be one of {COSTS}")
        if self.on_redis_error not in ON_REDIS_ERROR:
            raise ValueError(f"limit {self.name!r}: on_redis_error must be one of "
                             f"{ON_REDIS_ERROR}")

    def applies_to(self, model: str) -> bool:
        return "*" in self.models or model in self.models

    def units(self, rows: int) -> int:
        """What one request costs against this rule."""
        return rows if self.cost == "rows" else 1

    def emission_interval_us(self) -> int:
        """GCRA's T: microseconds one unit occupies. Whole microseconds keep the Lua
        arithmetic exact (doubles hold integers exactly to 2**53); rates above 10**6 units/s
        are capped there."""
        return max(1, round(self.period_s * 1_000_000 / self.rate))

    def principal_value(self, principal: Principal) -> str:
        """Whom to count: the subject, or the named claim ("" when the token lacks it, so
        such callers share one bucket rather than escape the limit)."""
        if self.key == "sub":
            return principal.subject
        value = principal.claims.get(self.key)
        return "" if value is None else str(value)
