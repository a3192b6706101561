"""Picking a route's arm: weighted rendezvous hashing of the sticky value, so one user always
lands in the same arm (on every replica), and changing one arm's weight moves only users into
or out of that arm, never between the others."""

from __future__ import annotations

import hashlib
import math
import random

from gateway.policy.model import Arm, Route
from gateway.types import RequestContext

_SCALE = 2.0**64


def pick_arm(route: Route, context: RequestContext) -> Arm:
    """The arm the override names, else the sticky value's arm, else a weighted random one."""
    if len(route.arms) == 1:
        return route.arms[0]
    if route.override is not None:
        wanted = route.override.first(context)
        for arm in route.arms:
            if arm.target.variant == wanted:
                return arm
    key = route.sticky.first(context) if route.sticky is not None else None
    if key is None:
        return random.choices(route.arms, weights=[a.weight for a in route.arms])[0]
    return max(route.arms, key=lambda arm: _score(route.name, arm, key))


def _score(route: str, arm: Arm, key: str) -> float:
    """-w / ln(u) for a uniform u in (0, 1) drawn from the hash: the arm with the highest score
    wins with probability w / sum(w) (the minimum of exponentials with rates w)."""
    digest = hashlib.blake2b(f"{route}\0{arm.target.variant}\0{key}".encode(),
                             digest_size=8).digest()
    unit = (int.from_bytes(digest, "big") + 0.5) / _SCALE
    return -arm.weight / math.log(unit)
