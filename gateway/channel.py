"""The supervisor ↔ worker channel of `gateway serve --workers N`: JSON objects, one per line,
over a Unix socket pair whose worker end the worker inherits (`--channel-fd`).

Worker → supervisor: `ready` (both doors listen), `policy_publish` and `policy_versions`
(requests with an `id`). Supervisor → worker: `reply` (to the request with that `id`) and
`policy_announce` (a version every worker should run)."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

Message = dict[str, Any]
READY, PUBLISH, VERSIONS = "ready", "policy_publish", "policy_versions"
REPLY, ANNOUNCE = "reply", "policy_announce"
_LIMIT = 64 * 1024 * 1024  # a policy's sources travel in one line


class Channel:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, sock: socket.socket) -> Channel:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=_LIMIT)
        return cls(reader, writer)

    async def send(self, message: Message) -> None:
        self._writer.write(json.dumps(message).encode() + b"\n")
        await self._writer.drain()

    async def receive(self) -> Message | None:
        """The next message; None once the other side has closed (or broke the protocol)."""
        try:
            line = await self._reader.readline()
            message = json.loads(line) if line else None
        except (ConnectionError, ValueError):  # reset, a line past the limit, not JSON
            return None
        return message if isinstance(message, dict) else None

    def close(self) -> None:
        self._writer.close()
