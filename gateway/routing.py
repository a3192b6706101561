"""Pipeline step 4, routing: which adapter and model version answer, and what else happens to
the request (fallbacks, a mirror). `PolicyRouter` applies the active policy; models no route
matches keep the `RouteTable`: names from config first, then whatever an adapter holds."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from gateway.backend import Adapter
from gateway.errors import NotFound
from gateway.policy.model import Policy, Route, TargetSpec
from gateway.policy.split import pick_arm
from gateway.types import ModelRef, RequestContext


@dataclass(frozen=True, slots=True)
class Target:
    """Where one request goes, and what else happens to it."""

    adapter: Adapter
    ref: ModelRef
    variant: str | None = None
    route: str = ""  # the policy route that chose it ("" for the route table)
    fallbacks: tuple[Target, ...] = ()  # in order, when this one is unavailable
    mirror: Shadow | None = None

    def candidates(self) -> tuple[Target, ...]:
        return (self, *self.fallbacks)


@dataclass(frozen=True, slots=True)
class Shadow:
    """Where a request is mirrored: the target, the largest output difference that still
    counts as agreement, and the mirrored call's own deadline."""

    target: Target
    tolerance: float
    timeout_s: float


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


class PolicyRouter:
    """The first route (in declaration order) whose model and conditions match decides.
    `policy` is read once per request, so a reload never splits one request across two
    policies."""

    def __init__(self, policy: Callable[[], Policy], adapters: Mapping[str, Adapter],
                 table: RouteTable, sample: Callable[[], float] = random.random) -> None:
        self._policy = policy
        self._adapters = adapters
        self._table = table
        self._sample = sample  # uniform in [0, 1): which requests are mirrored

    def route(self, ref: ModelRef, context: RequestContext) -> Target:
        for route in self._policy().routes:
            if route.match.applies(ref.model, context):
                return self._target(route, ref, context)
        return self._table.route(ref, context)

    def model_names(self) -> list[str]:
        routed = {r.match.model for r in self._policy().routes if r.match.model != "*"}
        return sorted(routed.union(self._table.model_names()))

    def _target(self, route: Route, ref: ModelRef, context: RequestContext) -> Target:
        spec = pick_arm(route, context).target
        mirror = route.mirror
        shadow = None
        if mirror is not None and self._sample() * 100 < mirror.percent:
            shadow = Shadow(self._resolve(mirror.target, ref, route), mirror.tolerance,
                            mirror.timeout_s)
        return Target(self._adapters[spec.adapter], spec.ref_for(ref), spec.variant,
                      route=route.name, mirror=shadow,
                      fallbacks=tuple(self._resolve(f, ref, route) for f in route.fallbacks))

    def _resolve(self, spec: TargetSpec, ref: ModelRef, route: Route) -> Target:
        return Target(self._adapters[spec.adapter], spec.ref_for(ref), spec.variant,
                      route=route.name)
