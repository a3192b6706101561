"""A worker of `gateway serve --workers N` (gateway/supervisor.py): a whole gateway, started by
the supervisor as `gateway serve ... --worker I --channel-fd FD` on ports the supervisor has
claimed. It dies with the supervisor, says over its channel when both doors listen, and
shares the routing policy with its siblings through the supervisor (gateway/policy/relay.py)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import logging
import os
import signal
import socket

from gateway.channel import READY, REPLY, Channel, Message
from gateway.policy.relay import RelayPolicySync

log = logging.getLogger(__name__)


def become_worker(index: int, channel_fd: int) -> WorkerLink:
    """Called first thing in a worker: die with the supervisor, ignore a forwarded SIGHUP
    until the gateway handles it (once it serves: it reads the policy files as it starts),
    then open the channel."""
    _die_with_parent()
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    return WorkerLink(index, socket.socket(fileno=channel_fd))


class WorkerLink:
    """A worker's end of its channel to the supervisor."""

    def __init__(self, index: int, sock: socket.socket) -> None:
        self.index = index
        self._sock = sock
        self._channel: Channel | None = None
        self._opening = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Message]] = {}
        self._announcements: asyncio.Queue[Message] = asyncio.Queue()

    async def ready(self, http_port: int, grpc_port: int) -> None:
        """Both doors listen: the supervisor counts this worker as started."""
        channel = await self._open()
        await channel.send({"kind": READY, "pid": os.getpid(), "http_port": http_port,
                            "grpc_port": grpc_port})

    def policy_sync(self) -> RelayPolicySync:
        return RelayPolicySync(self.request, self._announcements)

    async def request(self, message: Message) -> Message:
        """Send `message` and wait for the supervisor's reply; `ConnectionError` if the
        supervisor is gone."""
        channel = await self._open()
        if self._reader is None or self._reader.done():
            raise ConnectionError("the channel to the supervisor is closed")
        number = next(self._ids)
        reply: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[number] = reply
        try:
            await channel.send({**message, "id": number})
            return await reply
        finally:
            self._pending.pop(number, None)

    async def _open(self) -> Channel:
        async with self._opening:
            if self._channel is None:
                self._channel = await Channel.open(self._sock)
                self._reader = asyncio.get_running_loop().create_task(
                    self._read(self._channel), name="supervisor channel")
            return self._channel

    async def _read(self, channel: Channel) -> None:
        try:
            while (message := await channel.receive()) is not None:
                if message.get("kind") == REPLY:
                    future = self._pending.get(message.get("id", 0))
                    if future is not None and not future.done():
                        future.set_result(message)
                else:
                    self._announcements.put_nowait(message)
            log.warning("the supervisor closed the channel")
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("the supervisor is gone"))


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when the supervisor dies (even by SIGKILL), so no
    worker keeps a port the next supervisor would find taken."""
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before prctl
        os._exit(1)
