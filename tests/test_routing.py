"""`PolicyRouter`: first match wins, header and claim conditions, weighted sticky splits,
overrides, fallbacks and mirrors resolved to adapters; unmatched models keep the route table."""

from __future__ import annotations

import math
import random
import textwrap
import time
from collections import Counter
from typing import Any, cast

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.backend import Adapter
from gateway.errors import NotFound
from gateway.policy.loader import compile_policy
from gateway.policy.model import Policy
from gateway.routing import PolicyRouter, RouteTable
from gateway.types import ModelRef, Principal, RequestContext


class Backend:
    """Only what routing looks at: a name, and which models it holds."""

    def __init__(self, name: str, models: tuple[str, ...] = ()) -> None:
        self.name = name
        self._models = models

    def serves(self, model: str) -> bool:
        return model in self._models

    def model_names(self) -> list[str]:
        return list(self._models)


ADAPTERS = {name: cast(Adapter, Backend(name)) for name in ("local", "remote", "shadow")}
TABLE = RouteTable({"configured": ADAPTERS["remote"]},
                   [cast(Adapter, Backend("held", ("demo", "other")))])


def policy(text: str) -> Policy:
    return compile_policy((("p.toml", textwrap.dedent(text)),), set(ADAPTERS))


def router(text: str, sample: float = 0.5) -> PolicyRouter:
    compiled = policy(text)
    return PolicyRouter(lambda: compiled, ADAPTERS, TABLE, sample=lambda: sample)


def context(headers: dict[str, str] | None = None, **claims: Any) -> RequestContext:
    return RequestContext(frontend="test", headers=CIMultiDictProxy(CIMultiDict(headers or {})),
                          deadline=time.monotonic() + 10, principal=Principal("u", claims))


CONDITIONS = """\
[[routes]]
name = "by-header"
model = "demo"
target = { adapter = "remote", variant = "tenant" }
[routes.headers]
x-tenant = "acme"
x-user = { prefix = "internal-" }

[[routes]]
name = "trace"
model = "demo"
target = { adapter = "remote", variant = "trace" }
[routes.headers]
x-trace = { regex = "[0-9a-f]{4}" }

[[routes]]
name = "debug-without-legacy"
model = "demo"
target = { adapter = "shadow", variant = "debug" }
[routes.headers]
x-debug = { present = true }
x-legacy = { absent = true }

[[routes]]
name = "gold"
model = "*"
target = { adapter = "shadow", variant = "gold" }
[routes.claims]
tier = "gold"

[[routes]]
name = "beta"
model = "demo"
target = { adapter = "shadow", variant = "beta" }
[routes.claims]
groups = "beta"
verified = "true"

[[routes]]
name = "rest"
model = "demo"
target = { adapter = "local", variant = "default" }
"""


@pytest.mark.parametrize(("headers", "claims", "variant"), [
    ({"X-Tenant": "acme", "x-user": "internal-7"}, {}, "tenant"),  # names are case-insensitive
    ({"x-tenant": "acme", "x-user": "external-7"}, {}, "default"),  # every condition must hold
    ({"x-tenant": "ACME", "x-user": "internal-7"}, {}, "default"),  # values are case-sensitive
    ({"x-trace": "00af"}, {}, "trace"),
    ({"x-trace": "00af0"}, {}, "default"),  # the regex must match the whole value
    ({"x-debug": ""}, {}, "debug"),  # present even when empty
    ({"x-debug": "1", "x-legacy": "1"}, {}, "default"),
    ({}, {"tier": "gold"}, "gold"),
    ({}, {"tier": "silver"}, "default"),
    ({}, {"groups": ["alpha", "beta"], "verified": True}, "beta"),  # lists: any element
    ({}, {"groups": ["beta"], "verified": False}, "default"),
    ({"x-tenant": "acme", "x-user": "internal-1"}, {"tier": "gold"}, "tenant"),  # first wins
])
def test_conditions_and_first_match_wins(headers: dict[str, str], claims: dict[str, Any],
                                         variant: str) -> None:
    target = router(CONDITIONS).route(ModelRef("demo"), context(headers, **claims))
    assert target.variant == variant


def test_wildcard_route_matches_any_model_and_keeps_its_name() -> None:
    target = router(CONDITIONS).route(ModelRef("anything", "3"), context(tier="gold"))
    assert target.adapter is ADAPTERS["shadow"]
    assert target.ref == ModelRef("anything", "3") and target.route == "gold"


def test_unmatched_models_keep_the_route_table() -> None:
    routed = router(CONDITIONS)
    assert routed.route(ModelRef("configured"), context()).adapter is ADAPTERS["remote"]
    held = routed.route(ModelRef("other", label="stable"), context())
    assert held.adapter.name == "held" and held.variant is None and held.fallbacks == ()
    assert held.ref == ModelRef("other", label="stable")
    with pytest.raises(NotFound):
        routed.route(ModelRef("unknown"), context())
    assert routed.model_names() == ["configured", "demo", "other"]


def test_targets_pin_or_pass_through_what_the_client_asked_for() -> None:
    routed = router("""
        [[routes]]
        name = "pinned"
        model = "demo"
        target = { adapter = "remote", model = "demo_tf", label = "canary" }
        [[routes]]
        name = "through"
        model = "other"
        target = { adapter = "remote" }
        """)
    asked = ModelRef("demo", version="1", signature="sig")
    assert routed.route(asked, context()).ref == ModelRef("demo_tf", None, "canary", "sig")
    assert routed.route(ModelRef("other", "4"), context()).ref == ModelRef("other", "4")


SPLIT = """\
[[routes]]
name = "experiment"
model = "demo"
sticky = "header:x-user-id"
override = "header:x-experiment"
{arms}
[[routes.fallbacks]]
adapter = "local"
label = "stable"

[routes.mirror]
adapter = "shadow"
percent = 25
"""


def arms(**weights: float) -> str:
    return "".join(f'[[routes.variants]]\nvariant = "{name}"\nweight = {weight}\n'
                   f'adapter = "remote"\nlabel = "{name}"\n' for name, weight in weights.items())


def assignments(routed: PolicyRouter, users: range) -> list[str | None]:
    return [routed.route(ModelRef("demo"), context({"x-user-id": f"user-{n}"})).variant
            for n in users]


def test_split_follows_the_weights_within_statistical_tolerance() -> None:
    weights = {"a": 70.0, "b": 20.0, "c": 10.0}
    counts = Counter(assignments(router(SPLIT.format(arms=arms(**weights))), range(2000)))
    total = sum(weights.values())
    expected = {arm: 2000 * weight / total for arm, weight in weights.items()}
    chi_square = sum((counts[arm] - e) ** 2 / e for arm, e in expected.items())
    p_value = math.exp(-chi_square / 2)  # the chi-square survival function for 2 dof
    assert set(counts) == set(weights)
    assert p_value > 0.001, (counts, chi_square)


def test_split_without_a_sticky_value_still_follows_the_weights() -> None:
    random.seed(5)  # a weighted random arm per request: seeded, so the test cannot flake
    routed = router(SPLIT.format(arms=arms(a=3, b=1)))
    counts = Counter(routed.route(ModelRef("demo"), context()).variant for _ in range(2000))
    chi_square = (counts["a"] - 1500) ** 2 / 1500 + (counts["b"] - 500) ** 2 / 500
    assert chi_square < 10.83, counts  # p > 0.001 at 1 dof


def test_the_same_user_always_gets_the_same_arm_on_every_replica() -> None:
    text = SPLIT.format(arms=arms(a=50, b=50))
    first, second = router(text), router(text)
    for n in range(200):
        user = {"x-user-id": f"user-{n}"}
        seen = {r.route(ModelRef("demo"), context(user)).variant
                for r in (first, second) for _ in range(5)}
        assert len(seen) == 1, (n, seen)


def test_the_override_header_picks_the_named_arm() -> None:
    routed = router(SPLIT.format(arms=arms(a=99, b=1)))
    for n in range(100):
        chosen = routed.route(ModelRef("demo"), context({"x-user-id": f"user-{n}",
                                                          "x-experiment": "b"}))
        assert chosen.variant == "b" and chosen.ref.label == "b"
    # a value naming no arm is ignored: the sticky arm stands
    assert assignments(routed, range(50)) == [
        routed.route(ModelRef("demo"), context({"x-user-id": f"user-{n}",
                                                "x-experiment": "z"})).variant
        for n in range(50)]


def test_changing_one_weight_moves_only_users_into_that_arm() -> None:
    users = range(3000)
    before = assignments(router(SPLIT.format(arms=arms(a=50, b=30, c=20))), users)
    after = assignments(router(SPLIT.format(arms=arms(a=50, b=40, c=20))), users)
    moved = [(old, new) for old, new in zip(before, after, strict=True) if old != new]
    assert moved and all(new == "b" for _, new in moved)
    # b's share grows from 30% to 4/11 (36.4%): about 6.4% of users move, no more
    assert abs(len(moved) / len(users) - (40 / 110 - 0.3)) < 0.02, len(moved)


def test_adding_an_arm_moves_only_users_into_the_new_arm() -> None:
    users = range(3000)
    before = assignments(router(SPLIT.format(arms=arms(a=1, b=1))), users)
    after = assignments(router(SPLIT.format(arms=arms(a=1, b=1, c=1))), users)
    moved = [new for old, new in zip(before, after, strict=True) if old != new]
    assert moved and set(moved) == {"c"}


def test_fallbacks_and_mirror_resolve_to_adapters() -> None:
    target = router(SPLIT.format(arms=arms(a=1)), sample=0.2).route(
        ModelRef("demo"), context({"x-user-id": "u"}))
    assert [(t.adapter, t.ref, t.variant, t.route) for t in target.candidates()] == [
        (ADAPTERS["remote"], ModelRef("demo", label="a"), "a", "experiment"),
        (ADAPTERS["local"], ModelRef("demo", label="stable"), "fallback", "experiment")]
    assert target.mirror is not None
    assert target.mirror.target.adapter is ADAPTERS["shadow"]
    assert target.mirror.target.ref == ModelRef("demo")
    assert (target.mirror.tolerance, target.mirror.timeout_s) == (1e-5, 1.0)


def test_mirror_samples_its_percentage() -> None:
    text = SPLIT.format(arms=arms(a=1))
    assert router(text, sample=0.2499).route(ModelRef("demo"), context()).mirror is not None
    assert router(text, sample=0.25).route(ModelRef("demo"), context()).mirror is None


def test_each_request_reads_the_policy_once() -> None:
    reads = 0
    compiled = policy(SPLIT.format(arms=arms(a=1)))

    def active() -> Policy:
        nonlocal reads
        reads += 1
        return compiled

    PolicyRouter(active, ADAPTERS, TABLE).route(ModelRef("demo"), context())
    assert reads == 1
