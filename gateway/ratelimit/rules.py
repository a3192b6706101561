"""A rate-limit rule as the policy files state it, and what it counts requests by; the limiter
enforces a set of them."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Literal

from gateway.ratelimit.headers import policy_item, sf_string
from gateway.types import RequestContext

COSTS = ("request", "rows")
ON_REDIS_ERROR = ("open", "closed")
KeySource = Literal["claim", "header", "client_address", "tls_subject"]
#: Longer key values (a header is the client's to fill) are counted by their digest: a bucket
#: key stays short, and distinct values stay distinct.
MAX_KEY_VALUE = 128


@dataclass(frozen=True, slots=True)
class LimitKey:
    """Whom a rule counts separately: `key` in a `[[limits]]` table."""

    source: KeySource
    name: str = ""  # the claim or header (lower case) name

    @classmethod
    def parse(cls, text: str) -> LimitKey:
        """`"client_address"`, `"tls_subject"`, `"header:NAME"`, `"claim:NAME"`, or a bare
        claim name (`"sub"`, `"tenant"`). Raises `ValueError` for a prefix with no name."""
        if text == "client_address":
            return cls("client_address")
        if text == "tls_subject":
            return cls("tls_subject")
        source, _, name = text.partition(":")
        if source not in ("header", "claim"):
            return cls("claim", text)
        if not name:
            raise ValueError(f"key {text!r} names no {source}")
        return cls("header", name.lower()) if source == "header" else cls("claim", name)

    def value(self, context: RequestContext) -> str:
        """The request's value; "" when it has none (no such claim or header, no client
        certificate), so such requests share one bucket rather than escape the limit."""
        if self.source == "claim":
            if self.name == "sub":
                value = context.principal.subject
            else:
                claim = context.principal.claims.get(self.name)
                value = "" if claim is None else str(claim)
        elif self.source == "header":
            value = context.headers.get(self.name, "")
        elif self.source == "client_address":
            value = context.client_address
        else:
            value = context.tls_subject or ""
        if len(value) <= MAX_KEY_VALUE and (value.isascii() or _utf8(value)):
            return value
        return "sha256:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def _utf8(value: str) -> bool:
    """Whether `value` can be sent to Redis as it is: a header's undecodable bytes arrive as
    lone surrogates, which UTF-8 cannot carry (such a value is counted by its digest)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True)
class LimitRule:
    name: str
    models: tuple[str, ...]  # model names; "*" matches every model
    key: str = "sub"  # what requests are counted by (`LimitKey.parse`): a claim by default
    rate: float = 10.0  # requests (or rows) per period
    period_s: float = 1.0
    burst: int = 10  # how many may arrive at once
    cost: str = "request"  # "request": 1 per request; "rows": the rows in the batch
    on_redis_error: str = "open"  # "open": allow and count it; "closed": 503
    # Made once from the above: `key` parsed, and the rule as reply fields name it.
    by: LimitKey = field(init=False, repr=False, compare=False)
    sf_name: str = field(init=False, repr=False, compare=False)
    policy_item: str = field(init=False, repr=False, compare=False)

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
        object.__setattr__(self, "by", LimitKey.parse(self.key))
        object.__setattr__(self, "sf_name", sf_string(self.name))
        object.__setattr__(self, "policy_item", policy_item(self))

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

    def key_value(self, context: RequestContext) -> str:
        """The value of this rule's key for the request: which of its buckets counts it."""
        return self.by.value(context)

    def window_s(self) -> int:
        """Whole seconds a full burst takes to come back: the `w` of `RateLimit-Policy`."""
        return max(1, math.ceil(self.burst * self.period_s / self.rate))
