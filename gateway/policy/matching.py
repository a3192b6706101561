"""What a route tests about a request: header and claim values (exact, prefix, regex, present,
absent), read the same way for match conditions, sticky keys and variant overrides."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from gateway.types import RequestContext

ConditionKind = Literal["exact", "prefix", "regex", "present", "absent"]
CONDITION_KINDS: tuple[ConditionKind, ...] = ("exact", "prefix", "regex", "present", "absent")


@dataclass(frozen=True, slots=True)
class RequestKey:
    """A header (names are case-insensitive, stored lower case) or a verified claim."""

    source: Literal["header", "claim"]
    name: str

    @classmethod
    def of(cls, source: str, name: str) -> RequestKey:
        return cls("header", name.lower()) if source == "header" else cls("claim", name)

    def values(self, context: RequestContext) -> tuple[str, ...]:
        """The key's values; empty when the request lacks it. A list claim (groups, roles)
        has one value per element."""
        if self.source == "header":
            value = context.headers.get(self.name)
            return () if value is None else (value,)
        return _claim_values(context.principal.claims, self.name)

    def first(self, context: RequestContext) -> str | None:
        values = self.values(context)
        return values[0] if values else None


@dataclass(frozen=True, slots=True)
class Condition:
    kind: ConditionKind
    operand: str = ""
    pattern: re.Pattern[str] | None = None  # compiled once, for "regex"

    def holds(self, values: tuple[str, ...]) -> bool:
        """`present`/`absent` test that there is a value; the others that any value passes."""
        if self.kind == "absent":
            return not values
        if self.kind == "present":
            return bool(values)
        return any(self._passes(value) for value in values)

    def _passes(self, value: str) -> bool:
        if self.kind == "exact":
            return value == self.operand
        if self.kind == "prefix":
            return value.startswith(self.operand)
        assert self.pattern is not None
        return self.pattern.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class Match:
    """A model name ("*": any model) and conditions that must all hold."""

    model: str
    conditions: tuple[tuple[RequestKey, Condition], ...] = ()

    def applies(self, model: str, context: RequestContext) -> bool:
        if self.model not in ("*", model):
            return False
        return all(condition.holds(key.values(context)) for key, condition in self.conditions)


def _claim_values(claims: Mapping[str, Any], name: str) -> tuple[str, ...]:
    value = claims.get(name)
    if value is None:
        return ()
    items = value if isinstance(value, list | tuple) else (value,)
    return tuple(_as_text(item) for item in items)


def _as_text(value: Any) -> str:
    """Claims are JSON: booleans compare as JSON spells them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
