"""The running policy and the versions before it. Requests read `active` once each; a change
replaces it whole, so a request never sees half of one policy and half of another."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gateway.policy.model import Policy, Sources

log = logging.getLogger(__name__)

NO_POLICY = "none"  # the origin of the empty policy a gateway without policy files starts with


@dataclass(frozen=True, slots=True)
class PolicyVersion:
    """An applied policy as it is listed, replicated and restored."""

    number: int  # increases with every applied change (across replicas, through Redis)
    hash: str  # of the sources: equal content, equal hash
    origin: str  # "files", "admin", "rollback"; NO_POLICY
    sources: Sources
    parent: int | None  # the version a rollback from this one restores
    applied_at: float  # Unix time
    author: str | None = None  # who made an admin change or rollback (the token's subject)


@dataclass(frozen=True, slots=True)
class ActivePolicy:
    version: PolicyVersion
    policy: Policy


class PolicyStore:
    def __init__(self, active: ActivePolicy, keep: int) -> None:
        self._active = active
        self._keep = keep
        self._versions: dict[int, PolicyVersion] = {active.version.number: active.version}

    @property
    def active(self) -> ActivePolicy:
        return self._active

    def install(self, active: ActivePolicy) -> bool:
        """Run `active` unless a newer version already runs (announcements from replicas may
        cross); either way it joins the history."""
        self.remember(active.version)
        if active.version.number <= self._active.version.number:
            return False
        self._active = active
        return True

    def remember(self, version: PolicyVersion) -> None:
        self._versions[version.number] = version
        for number in sorted(self._versions)[:-self._keep]:
            del self._versions[number]

    def version(self, number: int) -> PolicyVersion | None:
        return self._versions.get(number)

    def history(self) -> list[PolicyVersion]:
        """Newest first."""
        return [self._versions[n] for n in sorted(self._versions, reverse=True)]


#: How a shared store (Redis, the supervisor) hands versions to a replica or worker.
OnVersions = Callable[[list[PolicyVersion]], Awaitable[None]]
OnVersion = Callable[[PolicyVersion], Awaitable[None]]


def version_record(version: PolicyVersion) -> str:
    """A version as shared stores keep it (JSON; the number is their key)."""
    return json.dumps({"hash": version.hash, "origin": version.origin,
                       "parent": version.parent, "applied_at": version.applied_at,
                       "author": version.author,
                       "sources": [list(source) for source in version.sources]})


def version_from_record(number: int, record: str | bytes) -> PolicyVersion | None:
    try:
        data: dict[str, Any] = json.loads(record)
        return PolicyVersion(number, data["hash"], data["origin"],
                             tuple((name, text) for name, text in data["sources"]),
                             data["parent"], data["applied_at"], data.get("author"))
    except (ValueError, KeyError, TypeError):
        log.error("policies: the shared record of version %d is unreadable; ignored", number)
        return None
