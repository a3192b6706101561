"""What a policy change changes, per section and as a unified diff of the files."""

from __future__ import annotations

from gateway.policy.diff import SectionDiff, policy_diff, sources_diff
from gateway.policy.loader import compile_policy

ADAPTERS = {"local", "remote"}


def route(name: str, adapter: str = "local") -> str:
    return f'[[routes]]\nname = "{name}"\nmodel = "*"\ntarget = {{ adapter = "{adapter}" }}\n'


def limit(name: str, rate: int = 10) -> str:
    return f'[[limits]]\nname = "{name}"\nmodels = ["*"]\nrate = {rate}\n'


def test_routes_and_limits_added_removed_changed_and_reordered() -> None:
    before = (("p.toml", route("a") + route("b") + route("c") + limit("x") + limit("y")),)
    after = (("p.toml", route("c") + route("b", "remote") + route("a") + route("d")
              + limit("y", 5)),)
    diff = policy_diff(compile_policy(before, ADAPTERS), compile_policy(after, ADAPTERS),
                       before, after)
    assert diff.routes == SectionDiff(added=("d",), changed=("b",), reordered=True)
    assert diff.limits == SectionDiff(removed=("x",), changed=("y",))
    assert diff.summary() == "routes: +d ~b (reordered); limits: -x ~y"
    assert diff.as_json()["limits"] == {"added": [], "removed": ["x"], "changed": ["y"],
                                        "reordered": False}
    same = policy_diff(compile_policy(before, ADAPTERS), compile_policy(before, ADAPTERS),
                       before, before)
    assert (same.summary(), same.text, bool(same.routes)) == (
        "no route or limit changed", "", False)


def test_the_sources_diff_goes_file_by_file() -> None:
    text = sources_diff((("a.toml", "x = 1\ny = 2"), ("b.toml", "gone\n")),
                        (("a.toml", "x = 1\ny = 3\n"), ("c.toml", "new\n")))
    assert text == ("--- a/a.toml\n+++ b/a.toml\n@@ -1,2 +1,2 @@\n x = 1\n-y = 2\n+y = 3\n"
                    "--- a/b.toml\n+++ /dev/null\n@@ -1 +0,0 @@\n-gone\n"
                    "--- /dev/null\n+++ b/c.toml\n@@ -0,0 +1 @@\n+new\n")
