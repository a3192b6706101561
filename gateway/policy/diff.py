"""What a policy change changes: per section, the routes and limits added, removed and changed
(by name), and a unified diff of the files; for dry runs, replies and the change log."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from gateway.policy.model import Policy, Sources


@dataclass(frozen=True, slots=True)
class SectionDiff:
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    reordered: bool = False  # the names both have, in another order (routes: first match wins)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed or self.reordered)

    def summary(self) -> str:
        """`+new -gone ~edited`, and `(reordered)`."""
        parts = ([f"+{n}" for n in self.added] + [f"-{n}" for n in self.removed]
                 + [f"~{n}" for n in self.changed] + (["(reordered)"] if self.reordered else []))
        return " ".join(parts)


@dataclass(frozen=True, slots=True)
class PolicyDiff:
    routes: SectionDiff
    limits: SectionDiff
    text: str  # unified diff of the sources, file by file; "" when they are the same

    def summary(self) -> str:
        """One line for the log: `routes: +b ~a; limits: -per-user`."""
        parts = [f"{name}: {section.summary()}" for name, section in
                 (("routes", self.routes), ("limits", self.limits)) if section]
        return "; ".join(parts) or "no route or limit changed"

    def as_json(self) -> dict[str, Any]:
        return {name: {"added": list(s.added), "removed": list(s.removed),
                       "changed": list(s.changed), "reordered": s.reordered}
                for name, s in (("routes", self.routes), ("limits", self.limits))}


def policy_diff(before: Policy, after: Policy, before_sources: Sources,
                after_sources: Sources) -> PolicyDiff:
    return PolicyDiff(
        _section({r.name: r for r in before.routes}, {r.name: r for r in after.routes}),
        _section({r.name: r for r in before.limits}, {r.name: r for r in after.limits}),
        sources_diff(before_sources, after_sources))


def sources_diff(before: Sources, after: Sources) -> str:
    """A unified diff per file name, in the order the files apply; a file only one side has
    is diffed against nothing (`/dev/null`)."""
    old, new = dict(before), dict(after)
    names = list(old) + [name for name in new if name not in old]
    chunks: list[str] = []
    for name in names:
        chunks.extend(difflib.unified_diff(
            old.get(name, "").splitlines(keepends=True), new.get(name, "").splitlines(
                keepends=True),
            f"a/{name}" if name in old else "/dev/null",
            f"b/{name}" if name in new else "/dev/null"))
    return "".join(line if line.endswith("\n") else line + "\n" for line in chunks)


def _section(before: dict[str, object], after: dict[str, object]) -> SectionDiff:
    both = [name for name in before if name in after]
    return SectionDiff(
        added=tuple(name for name in after if name not in before),
        removed=tuple(name for name in before if name not in after),
        changed=tuple(name for name in both if before[name] != after[name]),
        reordered=both != [name for name in after if name in before])
