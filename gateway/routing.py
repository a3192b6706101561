"""Pipeline step 4, routing: which adapter and model version answer. Policies plug in here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from adapters.base import Adapter
from gateway.errors import NotFound
from gateway.types import ModelRef, RequestContext


@dataclass(frozen=True, slots=True)
class Target:
    adapter: Adapter
    ref: ModelRef
    variant: str | None = None


class Router(Protocol):
    def route(self, ref: ModelRef, context: RequestContext) -> Target:
        """Pick the target; may read headers and the principal's claims (A/B, canary)."""

    def model_names(self) -> list[str]: ...


class RouteTable:
    """Model name to adapter: names from config first, then whatever an adapter holds."""

    def __init__(self, named: Mapping[str, Adapter], adapters: list[Adapter]) -> None:
        self._named = dict(named)
        self._adapters = adapters

    def route(self, ref: ModelRef, context: RequestContext) -> Target:
        adapter = self._named.get(ref.model)
        if adapter is None:
            adapter = next((a for a in self._adapters if a.serves(ref.model)), None)
        if adapter is None:
            raise NotFound(f"model {ref.model!r} not found")
        return Target(adapter, ref)

    def model_names(self) -> list[str]:
        names = set(self._named)
        for adapter in self._adapters:
            names.update(adapter.model_names())
        return sorted(names)
