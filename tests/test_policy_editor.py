"""`PolicyEditor` without Redis: versions, unchanged content, refusals that keep the running
policy, rollback walking back through history, and bounded history."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from gateway.errors import Conflict
from gateway.policy.editor import PolicyEditor
from gateway.policy.metrics import RoutingMetrics
from gateway.policy.store import PolicyVersion
from gateway.tomlconfig import ConfigError


def route_to(adapter: str, name: str = "r") -> str:
    return f'[[routes]]\nname = "{name}"\nmodel = "demo"\ntarget = {{ adapter = "{adapter}" }}\n'


def sources(adapter: str) -> tuple[tuple[str, str], ...]:
    return (("admin.toml", route_to(adapter)),)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def editor_for(registry: CollectorRegistry, directory: Path | None = None,
               keep: int = 20) -> PolicyEditor:
    return PolicyEditor({"a", "b", "c"}, directory, keep, RoutingMetrics(registry), None)


def changes(registry: CollectorRegistry, origin: str, result: str) -> float:
    return registry.get_sample_value("gateway_policy_changes_total",
                                     {"origin": origin, "result": result}) or 0.0


def adapter_of(editor: PolicyEditor) -> str:
    return editor.store.active.policy.routes[0].arms[0].target.adapter


def test_without_files_the_gateway_starts_on_the_empty_version_0(
        registry: CollectorRegistry) -> None:
    editor = editor_for(registry)
    version = editor.store.active.version
    assert (version.number, version.origin, version.sources) == (0, "none", ())
    assert editor.store.active.policy.routes == ()


def test_files_are_version_1_and_a_broken_file_stops_the_start(
        tmp_path: Path, registry: CollectorRegistry) -> None:
    (tmp_path / "p.toml").write_text(route_to("a"))
    editor = editor_for(registry, tmp_path)
    assert editor.store.active.version.number == 1 and adapter_of(editor) == "a"
    assert registry.get_sample_value("gateway_policy_version") == 1
    (tmp_path / "p.toml").write_text(route_to("zz"))
    with pytest.raises(ConfigError, match=rf"{tmp_path}/p.toml:4: routes\[0\].target.adapter"):
        editor_for(CollectorRegistry(), tmp_path)


async def test_each_change_is_a_new_version_and_the_same_content_is_not(
        registry: CollectorRegistry) -> None:
    editor = editor_for(registry)
    first = await editor.apply(sources("a"), "admin")
    assert (first.number, first.parent, first.origin) == (1, 0, "admin")
    assert await editor.apply(sources("a"), "admin") == first
    assert changes(registry, "admin", "unchanged") == 1
    second = await editor.apply(sources("b"), "admin")
    assert (second.number, second.parent) == (2, 1) and second.hash != first.hash
    assert adapter_of(editor) == "b"
    assert registry.get_sample_value("gateway_policy_version") == 2
    assert changes(registry, "admin", "applied") == 2


async def test_a_refused_edit_leaves_the_running_policy(registry: CollectorRegistry) -> None:
    editor = editor_for(registry)
    running = await editor.apply(sources("a"), "admin")
    with pytest.raises(ConfigError, match=r"admin.toml:4: routes\[0\].target.adapter"):
        await editor.apply(sources("nope"), "admin")
    assert editor.store.active.version == running and adapter_of(editor) == "a"
    assert changes(registry, "admin", "refused") == 1
    assert [v.number for v in editor.store.history()] == [1, 0]


async def test_rollback_walks_back_one_version_at_a_time(registry: CollectorRegistry) -> None:
    editor = editor_for(registry)
    for adapter in ("a", "b", "c"):
        await editor.apply(sources(adapter), "admin")
    restored = await editor.rollback()
    assert (restored.number, restored.origin, restored.parent) == (4, "rollback", 1)
    assert adapter_of(editor) == "b"
    restored = await editor.rollback()
    assert (restored.number, restored.parent) == (5, 0) and adapter_of(editor) == "a"
    restored = await editor.rollback()
    assert restored.number == 6 and restored.parent is None
    assert editor.store.active.policy.routes == ()
    with pytest.raises(Conflict, match="version 6 has no earlier version"):
        await editor.rollback()


async def test_history_is_bounded_and_rollback_says_when_it_went(
        registry: CollectorRegistry) -> None:
    editor = editor_for(registry, keep=2)
    for adapter in ("a", "b", "c", "a"):
        await editor.apply(sources(adapter), "admin")
    assert [v.number for v in editor.store.history()] == [4, 3]
    await editor.rollback()  # to 3's content; its parent, 2, is gone
    with pytest.raises(Conflict, match="version 2, before 5, is no longer kept"):
        await editor.rollback()


async def test_adopting_keeps_the_newest_and_refuses_what_does_not_fit(
        registry: CollectorRegistry) -> None:
    editor = editor_for(registry)
    await editor.apply(sources("a"), "admin")

    def announced(number: int, adapter: str) -> PolicyVersion:
        return PolicyVersion(number, f"h{number}", "admin", sources(adapter), number - 1, 0.0)

    await editor.adopt(announced(7, "b"))
    assert editor.store.active.version.number == 7 and adapter_of(editor) == "b"
    await editor.adopt(announced(5, "c"))  # crossed in flight: remembered, not run
    assert editor.store.active.version.number == 7 and editor.store.version(5) is not None
    await editor.adopt(announced(8, "elsewhere"))  # names an adapter this replica lacks
    assert editor.store.active.version.number == 7
    assert changes(registry, "redis", "refused") == 1
