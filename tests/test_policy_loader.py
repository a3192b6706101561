"""Policy files: what they may say, and refusals that name the file, the line and the key."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.policy.loader import compile_policy, content_hash, read_directory
from gateway.policy.matching import Condition, RequestKey
from gateway.policy.model import TargetSpec
from gateway.ratelimit.rules import LimitRule
from gateway.tomlconfig import ConfigError

ADAPTERS = {"local", "remote"}
ROOT = Path(__file__).resolve().parent.parent

FULL = """\
[[routes]]
name = "ab"
model = "demo"
sticky = "header:X-User-Id"
override = "claim:experiment"

[routes.headers]
X-Tenant = "acme"
x-user = { prefix = "internal-" }
x-trace = { regex = "[0-9a-f]{4}" }
x-debug = { present = true }
x-legacy = { absent = true }

[routes.claims]
tier = "gold"

[[routes.variants]]
variant = "a"
weight = 90
adapter = "local"
label = "stable"

[[routes.variants]]
variant = "b"
weight = 10
adapter = "remote"
model = "demo_tf"
version = 2

[[routes.fallbacks]]
adapter = "remote"

[[routes.fallbacks]]
adapter = "local"
variant = "last-resort"

[routes.mirror]
adapter = "remote"
version = 3
percent = 12.5
tolerance = 0.01
timeout_ms = 250

[[limits]]
name = "per-user"
models = ["demo"]
key = "tenant"
rate = 5
period_s = 2
burst = 7
cost = "rows"
on_redis_error = "closed"
"""


def compile_text(text: str, name: str = "p.toml") -> object:
    return compile_policy(((name, textwrap.dedent(text)),), ADAPTERS, Path("/etc/policies"))


def test_every_feature_parses_into_the_model() -> None:
    policy = compile_policy((("p.toml", FULL),), ADAPTERS)
    (route,) = policy.routes
    assert route.name == "ab" and route.match.model == "demo"
    assert dict(route.match.conditions) == {
        RequestKey("header", "x-tenant"): Condition("exact", "acme"),
        RequestKey("header", "x-user"): Condition("prefix", "internal-"),
        RequestKey("header", "x-trace"): route.match.conditions[2][1],
        RequestKey("header", "x-debug"): Condition("present"),
        RequestKey("header", "x-legacy"): Condition("absent"),
        RequestKey("claim", "tier"): Condition("exact", "gold"),
    }
    regex = route.match.conditions[2][1]
    assert regex.kind == "regex" and regex.pattern is not None
    assert regex.pattern.pattern == "[0-9a-f]{4}"
    assert route.sticky == RequestKey("header", "x-user-id")  # header names are lower-cased
    assert route.override == RequestKey("claim", "experiment")
    assert [(a.target, a.weight) for a in route.arms] == [
        (TargetSpec("local", label="stable", variant="a"), 90.0),
        (TargetSpec("remote", model="demo_tf", version="2", variant="b"), 10.0)]
    assert route.fallbacks == (TargetSpec("remote", variant="fallback"),
                               TargetSpec("local", variant="last-resort"))
    assert route.mirror is not None
    assert route.mirror.target == TargetSpec("remote", version="3")
    assert (route.mirror.percent, route.mirror.tolerance, route.mirror.timeout_s) == (
        12.5, 0.01, 0.25)
    assert policy.limits == (LimitRule("per-user", ("demo",), key="tenant", rate=5.0,
                                       period_s=2.0, burst=7, cost="rows",
                                       on_redis_error="closed"),)


def test_routes_keep_file_then_declaration_order() -> None:
    def route(name: str) -> str:
        return f'[[routes]]\nname = "{name}"\nmodel = "*"\ntarget = {{ adapter = "local" }}\n'

    policy = compile_policy((("a.toml", route("first") + route("second")),
                             ("b.toml", route("third"))), ADAPTERS)
    assert [r.name for r in policy.routes] == ["first", "second", "third"]


def test_a_single_target_is_one_arm_without_a_variant() -> None:
    policy = compile_policy((("default.toml", (ROOT / "policies/default.toml").read_text()),),
                            {"local"})
    (route,) = policy.routes
    assert route.match.model == "demo" and route.match.conditions == ()
    assert [(a.target, a.weight) for a in route.arms] == [(TargetSpec("local"), 1.0)]


def test_limit_defaults_are_the_rule_defaults() -> None:
    policy = compile_text('[[limits]]\nname = "all"\nmodels = ["*"]\n')
    assert policy.limits == (LimitRule("all", ("*",)),)  # type: ignore[attr-defined]


ROUTE = 'name = "r"\nmodel = "demo"\n'
TARGET = 'target = { adapter = "local" }\n'
VARIANT = '[[routes.variants]]\nvariant = "a"\nweight = 1\nadapter = "local"\n'


@pytest.mark.parametrize(("text", "where", "key", "message"), [
    ("[[routes]]\n" + ROUTE + 'target = { adapter = "nope" }\n', ":4:",
     "routes[0].target.adapter", "no adapter named 'nope' (have: local, remote)"),
    ("[[routes]]\n" + ROUTE + TARGET + "[[routes]]\n" + 'name = "s"\nmodel = "x"\n'
     + 'target = { adapter = "local", modle = "x" }\n', ":8:", "routes[1].target.modle",
     "unknown key"),
    ("[[routes]]\n" + ROUTE + TARGET + 'colour = "red"\n', ":5:", "routes[0].colour",
     "unknown key"),
    ("[[routes]]\n" + ROUTE + '[[routes.variants]]\nvariant = "a"\nweight = 0\n'
     + 'adapter = "local"\n', ":6:", "routes[0].variants[0].weight", "value > 0, got 0"),
    ("[[routes]]\n" + ROUTE + VARIANT + '[[routes.variants]]\nvariant = "b"\nweight = -2\n'
     + 'adapter = "local"\n', ":10:", "routes[0].variants[1].weight", "got -2"),
    ("[[routes]]\n" + ROUTE + VARIANT + VARIANT, ":9:", "routes[0].variants[1].variant",
     "another variant of this route is named 'a'"),
    ("[[routes]]\n" + ROUTE + TARGET + '[routes.headers]\nx-id = { regex = "[a-" }\n', ":6:",
     "routes[0].headers.x-id.regex", "not a valid regular expression"),
    ("[[routes]]\n" + ROUTE + TARGET + '[routes.headers]\nx-id = { prefix = "a", exact = "b" }\n',
     ":6:", "routes[0].headers.x-id", "a table with one of exact, prefix, regex"),
    ("[[routes]]\n" + ROUTE + TARGET + "[routes.claims]\nbeta = { present = false }\n", ":6:",
     "routes[0].claims.beta.present", "only `present = true`"),
    ("[[routes]]\n" + ROUTE + TARGET + 'sticky = "header:x-user"\n', ":5:", "routes[0].sticky",
     "applies to a split"),
    ("[[routes]]\n" + ROUTE + 'sticky = "cookie:id"\n' + VARIANT, ":4:", "routes[0].sticky",
     "expected \"header:NAME\" or \"claim:NAME\""),
    ("[[routes]]\n" + ROUTE, ":1:", "routes[0]", "set either target"),
    ("[[routes]]\n" + ROUTE + TARGET + VARIANT, ":1:", "routes[0]", "set either target"),
    ("[[routes]]\n" + 'name = "r"\n' + TARGET, ":1:", "routes[0].model", "missing"),
    ("[[routes]]\n" + ROUTE + 'target = { adapter = "local", version = 1, label = "x" }\n',
     ":4:", "routes[0].target.label", "either version or label"),
    ("[[routes]]\n" + ROUTE + 'target = { adapter = "local", version = 0 }\n', ":4:",
     "routes[0].target.version", ">= 1"),
    ("[[routes]]\n" + ROUTE + TARGET + "[[routes]]\n" + ROUTE + TARGET, ":6:",
     "routes[1].name", "another route is named 'r'"),
    ("[[routes]]\n" + ROUTE + TARGET + '[routes.mirror]\nadapter = "local"\npercent = 0\n',
     ":7:", "routes[0].mirror.percent", "(0, 100]"),
    ("[[routes]]\n" + ROUTE + TARGET + '[[routes.fallbacks]]\nadapter = "gone"\n', ":6:",
     "routes[0].fallbacks[0].adapter", "no adapter named 'gone'"),
    ('[[limits]]\nname = "l"\nmodels = []\n', ":3:", "limits[0].models", "non-empty"),
    ('[[limits]]\nname = "l"\nmodels = ["*"]\nrate = 0\n', ":4:", "limits[0].rate",
     "value > 0"),
    ('[[limits]]\nname = "l"\nmodels = ["*"]\ncost = "bytes"\n', ":4:", "limits[0].cost",
     "one of 'request', 'rows'"),
    ('[[limits]]\nname = "l"\nmodels = ["*"]\non_redis_error = "maybe"\n', ":4:",
     "limits[0].on_redis_error", "one of 'open', 'closed'"),
    ('[[limit]]\nname = "l"\n', ":1:", "limit", "unknown key (known keys here: limits, routes)"),
    # An unknown key is named before what its absence breaks ("set either target or ...").
    ("[[routes]]\n" + ROUTE + 'targt = { adapter = "local" }\n', ":4:", "routes[0].targt",
     "unknown key (known keys here: claims, fallbacks, headers, mirror, model, name, override, "
     "sticky, target, variants)"),
    ("[[routes]]\n" + ROUTE + '[[routes.variants]]\nvariant = "a"\nweigth = 1\n'
     + 'adapter = "local"\n', ":6:", "routes[0].variants[0].weigth",
     "unknown key (known keys here: adapter, label, model, variant, version, weight)"),
    ("[[routes]]\n" + ROUTE + TARGET + '[routes.mirror]\nadapter = "local"\npercnt = 5\n',
     ":7:", "routes[0].mirror.percnt", "unknown key (known keys here: adapter, label, model, "
     "percent, timeout_ms, tolerance, variant, version)"),
    ("[[routes]]\n" + ROUTE + TARGET + '[[routes.fallbacks]]\nadaptor = "local"\n', ":6:",
     "routes[0].fallbacks[0].adaptor",
     "unknown key (known keys here: adapter, label, model, variant, version)"),
    ("[[routes]]\n" + ROUTE + TARGET + '[routes.headers]\nx-id = { regex = "a", flags = "i" }\n',
     ":6:", "routes[0].headers.x-id.flags",
     "unknown key (known keys here: absent, exact, prefix, present, regex)"),
    ('[[limits]]\nname = "l"\nmodels = ["*"]\nrat = 5\nperiod = 2\n', ":4:", "limits[0].rat",
     "unknown key (known keys here: burst, cost, key, models, name, on_redis_error, period_s, "
     "rate); also unknown: period"),
    ("[[routes]]\nname = \n", ":", "not valid TOML", "(at line 2, column 8)"),
])
def test_invalid_policies_name_file_line_and_key(text: str, where: str, key: str,
                                                 message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        compile_policy((("shop.toml", text),), ADAPTERS, Path("/etc/policies"))
    error = str(caught.value)
    assert error.startswith(f"/etc/policies/shop.toml{where}"), error
    assert key in error and message in error, error


def test_read_directory_takes_toml_files_by_name_and_skips_hidden_ones(tmp_path: Path) -> None:
    (tmp_path / "b.toml").write_text("# b\n")
    (tmp_path / "a.toml").write_text("# a\n")
    (tmp_path / ".#a.toml").write_text("an editor's lock file")
    (tmp_path / "notes.txt").write_text("not policy")
    assert read_directory(tmp_path) == (("a.toml", "# a\n"), ("b.toml", "# b\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        read_directory(tmp_path / "gone")


def test_content_hash_depends_on_names_and_texts() -> None:
    one = content_hash((("a.toml", "x"),))
    assert one == content_hash((("a.toml", "x"),))
    assert one != content_hash((("b.toml", "x"),))
    assert one != content_hash((("a.toml", "y"),))
    assert content_hash((("a", "bc"),)) != content_hash((("ab", "c"),))


def test_check_config_and_serve_refuse_broken_policy_files(tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "shop.toml").write_text(
        '[[routes]]\nname = "r"\nmodel = "demo"\ntarget = { adapter = "elsewhere" }\n')
    config = tmp_path / "gateway.toml"
    config.write_text(f'[adapters.local]\nkind = "onnx"\nrepository = "{ROOT / "models"}"\n'
                      '[policies]\ndirectory = "policies"\n')
    for command in (["check-config", str(config)], ["serve", "--config", str(config)]):
        result = subprocess.run([sys.executable, "-m", "gateway", *command],
                                capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 2, result.stderr
        assert (f"invalid config: {tmp_path}/policies/shop.toml:4: routes[0].target.adapter: "
                "no adapter named 'elsewhere'") in result.stderr
    (tmp_path / "policies" / "shop.toml").write_text(
        '[[routes]]\nname = "r"\nmodel = "demo"\ntarget = { adapter = "local" }\n')
    result = subprocess.run([sys.executable, "-m", "gateway", "check-config", str(config)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0 and "1 policy routes" in result.stdout, result.stderr
