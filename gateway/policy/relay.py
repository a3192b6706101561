"""The workers of one `gateway serve --workers N` share one policy through their supervisor,
as replicas share one through Redis (`gateway/policy/sync.py`), and by the same rules: the
supervisor numbers every applied version, keeps the last N, and announces each to every
worker; a policy whose content already runs is not numbered again (the workers watch the same
files and all see an edit); a worker that (re)starts adopts what the supervisor holds. So a
change through one worker's admin API, or a file, reaches every worker with one version
number. With `[redis]` the workers use Redis instead, like any replica."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace

from gateway.channel import ANNOUNCE, PUBLISH, VERSIONS, Message
from gateway.errors import Unavailable
from gateway.policy.store import (
    OnVersion,
    OnVersions,
    PolicyVersion,
    version_from_record,
    version_record,
)

log = logging.getLogger(__name__)

#: Sends a request to the supervisor and returns its reply; raises `ConnectionError` if the
#: supervisor is gone.
Request = Callable[[Message], Awaitable[Message]]


class PolicyRelay:
    """The supervisor's side: the one counter, the versions kept and the active content."""

    def __init__(self, keep: int) -> None:
        self._keep = keep
        self._counter = 0
        self._active: tuple[int, str] | None = None  # number, hash
        self._records: dict[int, str] = {}

    def publish(self, message: Message) -> tuple[Message, Message | None]:
        """The reply to a `policy_publish`, and the announcement to send every worker (None if
        the content already runs)."""
        content, record, floor = message["hash"], message["record"], message["floor"]
        if self._active is not None and self._active[1] == content:
            number = self._active[0]
            return {"number": number, "record": self._records.get(number, record)}, None
        # A restarted supervisor must not hand out numbers its workers already run.
        self._counter = max(self._counter, floor) + 1
        number = self._counter
        self._records[number] = record
        for old in sorted(self._records)[:-self._keep]:
            del self._records[old]
        self._active = (number, content)
        return ({"number": number, "record": record},
                {"kind": ANNOUNCE, "number": number, "record": record})

    def versions(self) -> Message:
        """The reply to a `policy_versions`: every version kept, oldest first."""
        return {"versions": sorted(self._records.items())}


class RelayPolicySync:
    """A worker's side: what `PolicyEditor` calls, as it calls `RedisPolicySync`."""

    origin = "supervisor"

    def __init__(self, request: Request, announcements: asyncio.Queue[Message]) -> None:
        self._request = request
        self._announcements = announcements
        self._listener: asyncio.Task[None] | None = None

    async def publish(self, draft: PolicyVersion, floor: int) -> PolicyVersion:
        reply = await self._ask({"kind": PUBLISH, "hash": draft.hash,
                                 "record": version_record(draft), "floor": floor})
        number = int(reply["number"])
        return version_from_record(number, reply["record"]) or replace(draft, number=number)

    async def versions(self) -> list[PolicyVersion]:
        reply = await self._ask({"kind": VERSIONS})
        versions = (version_from_record(int(n), record) for n, record in reply["versions"])
        return [v for v in versions if v is not None]

    def listen(self, on_connect: OnVersions, on_version: OnVersion) -> None:
        """Adopt what the supervisor holds, then every version it announces until `close`."""
        self._listener = asyncio.get_running_loop().create_task(
            self._listen(on_connect, on_version))

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener

    async def _listen(self, on_connect: OnVersions, on_version: OnVersion) -> None:
        try:
            await on_connect(await self.versions())
        except Unavailable as exc:
            log.warning("policies: %s", exc.message)
        while True:
            message = await self._announcements.get()
            version = version_from_record(int(message["number"]), message["record"])
            if version is not None:
                try:
                    await on_version(version)
                except Exception:
                    log.exception("policies: adopting version %d failed", version.number)

    async def _ask(self, message: Message) -> Message:
        try:
            return await self._request(message)
        except ConnectionError:
            raise Unavailable("the supervisor did not answer", retry_after_s=1) from None
