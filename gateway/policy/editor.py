"""The one way the running policy changes. The file watch, SIGHUP, the admin API and other
replicas all come through here: validate, number (locally, or through Redis when replicas share
policies), install. An invalid policy is refused, logged and counted; the running one stays."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from gateway.errors import Conflict, Unavailable
from gateway.policy.diff import PolicyDiff, policy_diff
from gateway.policy.loader import compile_policy, content_hash, read_directory
from gateway.policy.metrics import RoutingMetrics
from gateway.policy.model import Policy, Sources
from gateway.policy.store import (
    NO_POLICY,
    ActivePolicy,
    OnVersion,
    OnVersions,
    PolicyStore,
    PolicyVersion,
)
from gateway.tomlconfig import ConfigError

log = logging.getLogger(__name__)
FILES, ADMIN, ROLLBACK, REPLICA = "files", "admin", "rollback", "redis"

#: What an admin edit makes of the active policy: the sources to run. It may raise (a
#: `GatewayError` to refuse, `ConfigError` for an invalid document); it runs under the editor's
#: lock, so no other change lands between reading the active policy and replacing it.
Edit = Callable[[ActivePolicy], Sources]


class PolicySync(Protocol):
    """How versions are numbered and shared: through Redis among replicas
    (`RedisPolicySync`), or through the supervisor among workers (`RelayPolicySync`)."""

    origin: str  # of the versions adopted from it, in metrics: "redis", "supervisor"

    async def publish(self, draft: PolicyVersion, floor: int) -> PolicyVersion: ...

    async def versions(self) -> list[PolicyVersion]: ...

    def listen(self, on_connect: OnVersions, on_version: OnVersion) -> None: ...

    async def close(self) -> None: ...


class PolicyEditor:
    def __init__(self, adapters: Collection[str], directory: Path | None, keep: int,
                 metrics: RoutingMetrics, sync: PolicySync | None) -> None:
        """Reads the policy files now: a gateway does not start on a broken policy. With
        Redis, they are version 0 until `start` publishes them (or adopts the shared one)."""
        self._adapters = adapters
        self._directory = directory
        self._metrics = metrics
        self._sync = sync
        self._lock = asyncio.Lock()  # one change at a time, so parents chain correctly
        sources: Sources = read_directory(directory) if directory else ()
        origin = FILES if directory else NO_POLICY
        number = 1 if directory and sync is None else 0
        initial = PolicyVersion(number, content_hash(sources), origin, sources, None, time.time())
        self.store = PolicyStore(ActivePolicy(initial, self._compile(sources, origin)), keep)
        metrics.policy_version.set(number)

    async def start(self) -> None:
        """With Redis: adopt the shared policy (or share ours if there is none yet), then
        follow the announcements of other replicas."""
        if self._sync is None:
            return
        try:
            await self.catch_up(await self._sync.versions())
        except Unavailable as exc:
            log.warning("policies: %s; serving the local files until Redis answers",
                        exc.message)
        self._sync.listen(self.catch_up, self.adopt)

    async def close(self) -> None:
        if self._sync is not None:
            await self._sync.close()

    def validate(self, sources: Sources) -> Policy:
        """The policy `sources` would be, without applying it (dry runs)."""
        return self._compile(sources, ADMIN)

    def preview(self, edit: Edit) -> tuple[Sources, Policy, PolicyDiff]:
        """What `edit` would run and change, without applying it (dry runs)."""
        active = self.store.active
        sources = edit(active)
        policy = self._compile(sources, ADMIN)
        return sources, policy, policy_diff(active.policy, policy, active.version.sources,
                                            sources)

    async def apply(self, sources: Sources, origin: str,
                    author: str | None = None) -> PolicyVersion:
        """Run `sources` as a new version (the running one if the content is the same);
        raises `ConfigError` if invalid, `Unavailable` if Redis cannot share it."""
        return await self.edit(lambda _: sources, origin, author)

    async def edit(self, edit: Edit, origin: str, author: str | None = None) -> PolicyVersion:
        """`apply` what `edit` makes of the active policy; `author`: who asked, logged with
        the diff and kept with the version."""
        async with self._lock:
            try:
                sources = edit(self.store.active)
            except ConfigError as exc:
                self._refuse(origin, exc)
                raise
            policy = self._checked(sources, origin)
            current = self.store.active.version
            if content_hash(sources) == current.hash:
                self._metrics.policy_changes.labels(origin, "unchanged").inc()
                return current
            return await self._publish(sources, origin, current.number, policy, author)

    async def reload_files(self) -> None:
        """Apply the policy directory if it differs from the running policy (file watch,
        SIGHUP); failures are logged and counted, never raised."""
        assert self._directory is not None
        try:
            sources = await asyncio.to_thread(read_directory, self._directory)
        except ConfigError as exc:
            self._refuse(FILES, exc)
            return
        with contextlib.suppress(ConfigError, Unavailable):  # logged and counted by apply
            await self.apply(sources, FILES)

    async def rollback(self, author: str | None = None) -> PolicyVersion:
        """Run the version the current one replaced, as a new version whose own rollback goes
        one further back."""
        async with self._lock:
            current = self.store.active.version
            if current.parent is None:
                raise Conflict(f"version {current.number} has no earlier version to roll "
                               "back to")
            previous = self.store.version(current.parent)
            if previous is None:
                raise Conflict(f"version {current.parent}, before {current.number}, is no "
                               "longer kept")
            policy = self._checked(previous.sources, ROLLBACK)
            return await self._publish(previous.sources, ROLLBACK, previous.parent, policy,
                                       author)

    async def adopt(self, version: PolicyVersion) -> None:
        """A version another replica published (or that Redis held when this one started)."""
        async with self._lock:
            if version.number <= self.store.active.version.number:
                self.store.remember(version)
                return
            origin = self._sync.origin if self._sync is not None else REPLICA
            try:
                policy = self._checked(version.sources, origin)
            except ConfigError:
                self.store.remember(version)
                return
            self._install(version, policy, origin)

    async def catch_up(self, shared: list[PolicyVersion]) -> None:
        """On (re)connecting to Redis: adopt what it holds, oldest first; if it holds nothing
        (a new or restarted Redis), share the running policy so later replicas load it."""
        for version in shared:
            await self.adopt(version)
        if shared or self.store.active.version.origin == NO_POLICY:
            return
        async with self._lock:
            active = self.store.active
            await self._publish(active.version.sources, active.version.origin,
                                active.version.parent, active.policy)

    async def _publish(self, sources: Sources, origin: str, parent: int | None,
                       policy: Policy, author: str | None = None) -> PolicyVersion:
        current = self.store.active.version
        draft = PolicyVersion(0, content_hash(sources), origin, sources, parent, time.time(),
                              author)
        if self._sync is None:
            version = replace(draft, number=current.number + 1)
        else:
            try:
                version = await self._sync.publish(draft, floor=current.number)
            except Unavailable as exc:
                self._metrics.policy_changes.labels(origin, "failed").inc()
                log.error("policy from %s not applied, version %d stays: %s", origin,
                          current.number, exc.message)
                raise
        self._install(version, policy, origin)
        return version

    def _install(self, version: PolicyVersion, policy: Policy, origin: str) -> None:
        """Every change is logged with who made it (admin changes, rollbacks) and its diff
        against the version it replaces here."""
        before = self.store.active
        if self.store.install(ActivePolicy(version, policy)):
            self._metrics.policy_version.set(version.number)
            self._metrics.policy_changes.labels(origin, "applied").inc()
            diff = policy_diff(before.policy, policy, before.version.sources, version.sources)
            by = f", by {version.author}" if version.author is not None else ""
            log.info("policy version %d (%s%s, %s) applied: %d routes, %d limits; %s "
                     "(from version %d)%s", version.number, version.origin, by, version.hash,
                     len(policy.routes), len(policy.limits), diff.summary(),
                     before.version.number, "\n" + diff.text.rstrip("\n") if diff.text else "")

    def _checked(self, sources: Sources, origin: str) -> Policy:
        try:
            return self._compile(sources, origin)
        except ConfigError as exc:
            self._refuse(origin, exc)
            raise

    def _compile(self, sources: Sources, origin: str) -> Policy:
        base = self._directory if origin == FILES else None
        return compile_policy(sources, self._adapters, base)

    def _refuse(self, origin: str, error: ConfigError) -> None:
        self._metrics.policy_changes.labels(origin, "refused").inc()
        log.error("policy from %s refused, version %d stays: %s", origin,
                  self.store.active.version.number, error)
