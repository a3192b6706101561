"""Re-reads the policy directory when its files change (names, inodes, sizes and mtimes are
polled) or when woken (SIGHUP). A change is read once the directory has looked the same for a
whole interval, so a file caught in the middle of being written is not applied half-written."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from gateway.policy.loader import policy_files

log = logging.getLogger(__name__)
Snapshot = dict[str, tuple[int, int, int]]


class PolicyWatcher:
    def __init__(self, directory: Path, interval_s: float,
                 reload: Callable[[], Awaitable[None]]) -> None:
        self._directory = directory
        self._interval_s = interval_s
        self._reload = reload
        self._woken = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._applied = _snapshot(directory)  # the files the running policy was read from

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def wake(self) -> None:
        """Reload now, changed or not (SIGHUP)."""
        self._woken.set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        previous = self._applied
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval_s):
                    await self._woken.wait()
            woken = self._woken.is_set()
            self._woken.clear()
            try:
                current = await asyncio.to_thread(_snapshot, self._directory)
                if woken or (current != self._applied and current == previous):
                    self._applied = current
                    await self._reload()
                previous = current
            except Exception:
                log.exception("policies: watching %s failed", self._directory)


def _snapshot(directory: Path) -> Snapshot:
    snapshot = {}
    for path in policy_files(directory):
        with contextlib.suppress(OSError):  # deleted between listing and stat
            stat = path.stat()
            snapshot[path.name] = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
    return snapshot
