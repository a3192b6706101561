"""For the drain tests (tests/test_drain.py): `gateway serve` as a child process, and a client
that counts: keep-alive connections over raw sockets, each looping requests, recording every
request it wrote and every reply it read, so a request sent and never answered is seen."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PREDICT = json.dumps({"instances": [[1, 2, 3, 4]]}).encode()


@dataclass
class ServeProcess:
    """`gateway serve --config CONFIG` on free ports; its stderr is kept in `log`."""

    process: asyncio.subprocess.Process
    http_port: int = 0
    grpc_port: int = 0
    log: list[str] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, config: Path, env: dict[str, str] | None = None) -> ServeProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "serve", "--config", str(config),
            "--http-port", "0", "--grpc-port", "0", stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **(env or {})})
        serve = cls(process)
        ports: dict[str, int] = {}
        assert process.stderr is not None
        while len(ports) < 2:  # wait on the log lines, not on a timer
            line = (await asyncio.wait_for(process.stderr.readline(), 60)).decode()
            assert line, "gateway exited before it listened:\n" + "".join(serve.log)
            serve.log.append(line)
            match = re.search(r"listening on (http|grpc)://127\.0\.0\.1:(\d+)", line)
            if match:
                ports[match[1]] = int(match[2])
        serve.http_port, serve.grpc_port = ports["http"], ports["grpc"]
        serve._reader = asyncio.get_running_loop().create_task(serve._read_log())
        return serve

    async def _read_log(self) -> None:
        assert self.process.stderr is not None
        while line := await self.process.stderr.readline():
            self.log.append(line.decode())

    def logged(self, text: str) -> bool:
        return any(text in line for line in self.log)

    async def ready(self, path: str = "/readyz") -> int:
        """The status of GET `path` on a connection of its own; 0 if refused."""
        try:
            status, _, _ = await request_once(self.http_port, "GET", path)
        except OSError:
            return 0
        return status

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    async def exit_code(self, within: float = 60) -> int:
        code = await asyncio.wait_for(self.process.wait(), within)
        if self._reader is not None:
            await self._reader
        return code

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        if self._reader is not None:
            await self._reader


async def request_once(port: int, method: str, path: str, body: bytes = b"",
                       headers: dict[str, str] | None = None
                       ) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(encode_request(method, path, body, {"Connection": "close",
                                                         **(headers or {})}))
        return await read_response(reader)
    finally:
        writer.close()


def encode_request(method: str, path: str, body: bytes = b"",
                   headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: gateway", f"Content-Length: {len(body)}",
             *(f"{k}: {v}" for k, v in (headers or {}).items())]
    if body:
        lines.append("Content-Type: application/json")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One response; `asyncio.IncompleteReadError` if the connection ends first."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
    body = await reader.readexactly(int(headers.get("content-length", 0)))
    return int(status_line.split()[1]), headers, body


@dataclass
class Tally:
    """What a counting client saw."""

    sent: int = 0
    replies: Counter[int] = field(default_factory=Counter)  # status -> count
    dropped: int = 0  # written on an open connection, the connection ended without a reply
    told_to_close: int = 0  # replies with `Connection: close`
    connected: list[float] = field(default_factory=list)  # when each connection opened
    refused: list[float] = field(default_factory=list)  # when a connect was refused
    errors: list[str] = field(default_factory=list)  # anything else

    @property
    def answered(self) -> int:
        return sum(self.replies.values())


class CountingClient:
    """`connections` keep-alive connections, each writing one request, reading its reply, and
    again; a connection the gateway closes after a reply (`Connection: close`) is opened anew,
    and a worker whose connect is refused stops. `stop()` ends the loops after their current
    request. With `headers={"Connection": "close"}` each request has a connection of its own."""

    def __init__(self, port: int, connections: int, path: str = "/v1/models/demo:predict",
                 body: bytes = PREDICT, headers: dict[str, str] | None = None) -> None:
        self.port = port
        self.tally = Tally()
        self._request = encode_request("POST", path, body, headers)
        self._stopping = False
        self._workers = [asyncio.get_running_loop().create_task(self._worker())
                         for _ in range(connections)]

    async def stop(self) -> Tally:
        self._stopping = True
        await asyncio.gather(*self._workers)
        return self.tally

    async def finished(self) -> Tally:
        """Wait until every worker stopped by itself (its connect refused)."""
        await asyncio.gather(*self._workers)
        return self.tally

    async def _worker(self) -> None:
        tally = self.tally
        while not self._stopping:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except ConnectionRefusedError:
                tally.refused.append(time.monotonic())
                return
            tally.connected.append(time.monotonic())
            try:
                await self._loop(reader, writer)
            finally:
                writer.close()

    async def _loop(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tally = self.tally
        while not self._stopping:
            if reader.at_eof():  # closed by the gateway while idle, before we wrote: fine
                return
            writer.write(self._request)
            tally.sent += 1
            try:
                status, headers, _ = await read_response(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                tally.dropped += 1
                return
            except Exception as exc:  # counted: the test shows it
                tally.errors.append(repr(exc))
                return
            tally.replies[status] += 1
            if headers.get("connection", "").lower() == "close":
                tally.told_to_close += 1
                return
