"""A routing policy as frozen data: built once by the loader, then only read by requests."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.policy.matching import Match, RequestKey
from gateway.ratelimit.rules import LimitRule
from gateway.types import ModelRef

#: A policy's source files in the order they apply: (file name, TOML text).
Sources = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """Where a request goes. What it leaves unset comes from the client's request: no model
    keeps the name asked for, no version and no label keep the version or label asked for."""

    adapter: str
    model: str | None = None
    version: str | None = None
    label: str | None = None
    variant: str | None = None  # echoed in `x-gateway-variant`

    def ref_for(self, asked: ModelRef) -> ModelRef:
        pinned = self.version is not None or self.label is not None
        return ModelRef(self.model or asked.model,
                        self.version if pinned else asked.version,
                        self.label if pinned else asked.label,
                        asked.signature)


@dataclass(frozen=True, slots=True)
class Arm:
    """One variant of a split: its target (whose `variant` names the arm) and weight."""

    target: TargetSpec
    weight: float


@dataclass(frozen=True, slots=True)
class MirrorSpec:
    target: TargetSpec
    percent: float  # of the route's requests copied to the mirror
    tolerance: float  # largest absolute output difference that still counts as agreement
    timeout_s: float


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    match: Match
    arms: tuple[Arm, ...]  # a single target is one arm
    sticky: RequestKey | None = None  # same value, same arm
    override: RequestKey | None = None  # its value, if it names an arm, picks that arm
    fallbacks: tuple[TargetSpec, ...] = ()
    mirror: MirrorSpec | None = None


@dataclass(frozen=True, slots=True)
class Policy:
    routes: tuple[Route, ...] = ()
    limits: tuple[LimitRule, ...] = ()
