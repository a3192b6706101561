"""PATCH's document: the sections it sets replace the active policy's, the others are kept as
their files write them (comments included), or refused when they cannot be cut out."""

from __future__ import annotations

import pytest

from gateway.policy.loader import compile_policy
from gateway.policy.sections import CannotKeep, patched, sections_set
from gateway.tomlconfig import ConfigError

ADAPTERS = {"local"}
ROUTES = """# the demo
[[routes]]
name = "r"
model = "demo"

[routes.headers]
x-tenant = "acme"

[[routes.variants]]
variant = "a"
weight = 1
adapter = "local"
"""
LIMITS = """
# per tenant, agreed with sales
[[limits]]
name = "tenant"
models = ["*"]
key = "tenant"

[[limits]]
name = "all"   # a backstop
models = ["*"]
"""
NEW_ROUTE = '[[routes]]\nname = "new"\nmodel = "demo"\ntarget = { adapter = "local" }\n'


def test_the_sections_a_document_sets() -> None:
    assert sections_set((("a.toml", ROUTES), ("b.toml", LIMITS))) == {"routes", "limits"}
    assert sections_set((("a.toml", "limits = []\n"),)) == {"limits"}
    assert sections_set((("a.toml", "# nothing\n"),)) == set()


def test_kept_sections_follow_the_patch_as_their_files_write_them() -> None:
    active = (("10-routes.toml", ROUTES), ("20-limits.toml", LIMITS))
    [(name, document)] = patched(active, "admin.toml", NEW_ROUTE)
    assert name == "admin.toml"
    assert document == NEW_ROUTE + "\n# limits kept from 20-limits.toml\n" + LIMITS.lstrip()
    policy = compile_policy(((name, document),), ADAPTERS)
    assert [r.name for r in policy.routes] == ["new"]
    assert [rule.name for rule in policy.limits] == ["tenant", "all"]


def test_a_section_spread_over_files_and_mixed_with_others_is_cut_out_in_order() -> None:
    mixed = LIMITS.replace('name = "all"', 'name = "first"') + "\n" + ROUTES
    active = (("a.toml", mixed), ("b.toml", LIMITS.replace("tenant", "second")))
    [(name, document)] = patched(active, "admin.toml", NEW_ROUTE)
    policy = compile_policy(((name, document),), ADAPTERS)
    assert [rule.name for rule in policy.limits] == ["tenant", "first", "second", "all"]
    assert "x-tenant" not in document and "agreed with sales" in document
    [(_, document)] = patched(active, "admin.toml", "limits = []\n")
    policy = compile_policy((("admin.toml", document),), ADAPTERS)
    assert (policy.limits, [r.name for r in policy.routes]) == ((), ["r"])


def test_sections_that_cannot_be_cut_out_are_refused() -> None:
    inline = 'limits = [{ name = "l", models = ["*"] }]\n' + ROUTES
    with pytest.raises(CannotKeep, match=r"^a.toml: its limits are not all written as "
                       r"\[\[limits\]\] tables"):
        patched((("a.toml", inline),), "admin.toml", NEW_ROUTE)
    tricky = ROUTES.replace('model = "demo"', 'model = """\n[[limits]]\n"""') + LIMITS
    with pytest.raises(CannotKeep, match="cannot be cut out of their files as written"):
        patched((("a.toml", tricky),), "admin.toml", NEW_ROUTE)


def test_a_patch_must_set_a_section() -> None:
    with pytest.raises(ConfigError, match=r"^admin.toml:1: rotes: unknown key \(known keys "
                       r"here: limits, routes\)"):
        patched((), "admin.toml", '[[rotes]]\nname = "x"\n')
    with pytest.raises(ConfigError, match="sets none of the sections routes, limits"):
        patched((), "admin.toml", "# empty\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        patched((), "admin.toml", "[[routes]\n")
