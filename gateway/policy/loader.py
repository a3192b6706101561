"""Policy files into a `Policy`: parsed and validated once, with errors that name the file, the
line and the key (`gateway.tomlconfig`). Nothing here touches the running policy."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection
from pathlib import Path

from gateway.policy.matching import (
    CONDITION_KINDS,
    Condition,
    ConditionKind,
    Match,
    RequestKey,
)
from gateway.policy.model import Arm, MirrorSpec, Policy, Route, Sources, TargetSpec
from gateway.ratelimit.rules import COSTS, ON_REDIS_ERROR, LimitRule
from gateway.tomlconfig import ConfigError, Source, Table, keys_of

FALLBACK_VARIANT = "fallback"
SECTIONS = ("routes", "limits")  # a policy document's top-level keys
ROUTE_KEYS = ("name", "model", "headers", "claims", "target", "variants", "sticky", "override",
              "fallbacks", "mirror")
TARGET_KEYS = ("adapter", "model", "version", "label", "variant")
VARIANT_KEYS = (*TARGET_KEYS, "weight")
MIRROR_KEYS = (*TARGET_KEYS, "percent", "tolerance", "timeout_ms")
LIMIT_DERIVED = ("by", "sf_name", "policy_item")  # LimitRule fields made from the others


def policy_files(directory: Path) -> list[Path]:
    """Every `*.toml` in the directory, by name; hidden files (editors' temporary copies) are
    not policy."""
    return sorted(p for p in directory.glob("*.toml") if not p.name.startswith("."))


def read_directory(directory: Path) -> Sources:
    if not directory.is_dir():  # gone is an error, not an empty policy
        raise ConfigError(f"{directory}: the policy directory does not exist")
    try:
        return tuple((p.name, p.read_text(encoding="utf-8")) for p in policy_files(directory))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{directory}: cannot read the policy files: {exc}") from None


def content_hash(sources: Sources) -> str:
    digest = hashlib.sha256()
    for name, text in sources:
        digest.update(f"{len(name)}:{name}{len(text)}:{text}".encode())
    return digest.hexdigest()[:16]


def compile_policy(sources: Sources, adapters: Collection[str],
                   base: Path | None = None) -> Policy:
    """Routes in file order, then declaration order; limits likewise. `adapters` are the names
    routes may use; `base` is where the files live, for error messages."""
    routes: list[Route] = []
    limits: list[LimitRule] = []
    for name, text in sources:
        root = Source(base / name if base else Path(name), text).root()
        root.expect(SECTIONS)
        for t in root.array("routes"):
            route = _route(t, adapters)
            if any(r.name == route.name for r in routes):
                raise t.error("name", f"another route is named {route.name!r}")
            routes.append(route)
        for t in root.array("limits"):
            limit = _limit(t)
            if any(rule.name == limit.name for rule in limits):
                raise t.error("name", f"another limit is named {limit.name!r}")
            limits.append(limit)
        root.finish()
    return Policy(tuple(routes), tuple(limits))


def _route(t: Table, adapters: Collection[str]) -> Route:
    t.expect(ROUTE_KEYS)
    name = _nonempty(t, "name")
    match = Match(_nonempty(t, "model"),
                  _conditions(t.table("headers"), "header") + _conditions(t.table("claims"),
                                                                          "claim"))
    if ("target" in t) == ("variants" in t):
        raise t.error(None, "set either target (one destination) or [[variants]] (a split)")
    arms: tuple[Arm, ...]
    if "target" in t:
        arms = (Arm(_target(t.table("target"), adapters), 1.0),)
        for key in ("sticky", "override"):
            if key in t:
                raise t.error(key, "applies to a split: use [[variants]]")
    else:
        arms = _arms(t, adapters)
    route = Route(
        name=name, match=match, arms=arms,
        sticky=_request_key(t, "sticky"),
        override=_request_key(t, "override"),
        fallbacks=tuple(_target(f, adapters, FALLBACK_VARIANT) for f in t.array("fallbacks")),
        mirror=_mirror(t.table("mirror"), adapters) if "mirror" in t else None,
    )
    t.finish()
    return route


def _arms(t: Table, adapters: Collection[str]) -> tuple[Arm, ...]:
    arms: list[Arm] = []
    tables = t.array("variants")
    if not tables:
        raise t.error("variants", "a split needs at least one [[variants]] table")
    for v in tables:
        v.expect(VARIANT_KEYS)
        weight = _positive(v, "weight")
        target = _target(v, adapters, _nonempty(v, "variant"), VARIANT_KEYS)
        if any(a.target.variant == target.variant for a in arms):
            raise v.error("variant", f"another variant of this route is named {target.variant!r}")
        arms.append(Arm(target, weight))
    return tuple(arms)


def _target(t: Table, adapters: Collection[str], variant: str | None = None,
            keys: tuple[str, ...] = TARGET_KEYS) -> TargetSpec:
    """A destination table, which may hold `keys`; `variant` is the name to echo when the
    table sets none."""
    t.expect(keys)
    adapter = t.text("adapter")
    if adapter not in adapters:
        raise t.error("adapter", f"no adapter named {adapter!r} (have: "
                      f"{', '.join(sorted(adapters)) or 'none'})")
    version = t.integer("version", minimum=1) if "version" in t else None
    label = t.text("label", "") or None
    if version is not None and label is not None:
        raise t.error("label", "set either version or label, not both")
    spec = TargetSpec(adapter, t.text("model", "") or None,
                      None if version is None else str(version), label,
                      t.text("variant", variant or "") or None)
    t.finish()
    return spec


def _mirror(t: Table, adapters: Collection[str]) -> MirrorSpec:
    t.expect(MIRROR_KEYS)
    percent = t.number("percent")
    if not 0 < percent <= 100:
        raise t.error("percent", f"expected a percentage in (0, 100], got {percent:g}")
    spec = MirrorSpec(
        target=_target(t, adapters, keys=MIRROR_KEYS),
        percent=percent,
        tolerance=t.number("tolerance", 1e-5, minimum=0),
        timeout_s=t.integer("timeout_ms", 1000, minimum=1) / 1000,
    )
    t.finish()
    return spec


def _conditions(t: Table, source: str) -> tuple[tuple[RequestKey, Condition], ...]:
    """`name = "value"` (exact match), or `name = { KIND = ... }` with one condition kind."""
    conditions = []
    for name in list(t.data):
        key = RequestKey.of(source, name)
        if isinstance(t.data[name], str):
            conditions.append((key, Condition("exact", t.text(name))))
            continue
        kinds = [k for k in CONDITION_KINDS if k in t.data[name]] if isinstance(
            t.data[name], dict) else []
        if len(kinds) != 1:
            raise t.error(name, "expected a string (exact match) or a table with one of "
                          + ", ".join(CONDITION_KINDS))
        conditions.append((key, _condition(t.table(name), kinds[0])))
    t.finish()
    return tuple(conditions)


def _condition(t: Table, kind: ConditionKind) -> Condition:
    t.expect(CONDITION_KINDS)
    if kind in ("present", "absent"):
        if not t.flag(kind, False):
            raise t.error(kind, f"only `{kind} = true` is meaningful")
        condition = Condition(kind)
    else:
        operand = t.text(kind)
        try:
            pattern = re.compile(operand) if kind == "regex" else None
        except re.error as exc:
            raise t.error(kind, f"not a valid regular expression: {exc}") from None
        condition = Condition(kind, operand, pattern)
    t.finish()
    return condition


def _request_key(t: Table, key: str) -> RequestKey | None:
    """`"header:NAME"` or `"claim:NAME"`."""
    text = t.text(key, "")
    if not text:
        return None
    source, _, name = text.partition(":")
    if source not in ("header", "claim") or not name:
        raise t.error(key, f"expected \"header:NAME\" or \"claim:NAME\", got {text!r}")
    return RequestKey.of(source, name)


def _limit(t: Table) -> LimitRule:
    t.expect(keys_of(LimitRule, without=LIMIT_DERIVED))
    d = LimitRule(name="defaults", models=("*",))
    name = _nonempty(t, "name")
    models = t.texts("models")
    if not models:
        raise t.error("models", "expected a non-empty list of model names (\"*\": every model)")
    try:
        rule = LimitRule(
            name=name,
            models=models,
            key=_nonempty(t, "key", d.key),
            rate=_positive(t, "rate", d.rate),
            period_s=_positive(t, "period_s", d.period_s),
            burst=t.integer("burst", d.burst, minimum=1),
            cost=t.text("cost", d.cost, choices=COSTS),
            on_redis_error=t.text("on_redis_error", d.on_redis_error, choices=ON_REDIS_ERROR),
        )
    except ValueError as exc:  # any other rule the limiter cannot enforce
        raise t.error(None, str(exc)) from None
    t.finish()
    return rule


def _nonempty(t: Table, key: str, default: str | None = None) -> str:
    value: str = t.text(key, default)
    if not value:
        raise t.error(key, "must not be empty")
    return value


def _positive(t: Table, key: str, default: float | None = None) -> float:
    value = t.number(key, default)
    if value <= 0:
        raise t.error(key, f"expected a value > 0, got {value:g}")
    return value

