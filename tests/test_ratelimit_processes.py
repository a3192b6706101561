"""Two gateway processes, one Redis: a limit is global, not per replica.

Real `python -m gateway serve` processes (their own interpreters, event loops and connection
pools) with the limit in a policy file, and 200 concurrent HTTP requests split between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from tests.redis_server import redis_server  # noqa: F401 (a fixture)
from tests.test_ratelimit_rest import body, limits_config
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")


class GatewayProcess:
    """`gateway serve` on free ports; its log goes to a file the test reads for the port."""

    def __init__(self, config: Path, log: Path) -> None:
        self._config = config
        self._log = log
        self.port = 0
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self._log.open("wb") as log:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway", "serve", "--config", str(self._config),
                "--http-port", "0", "--grpc-port", "0", cwd=ROOT, stdout=log, stderr=log)

    def listening(self) -> bool:
        assert self._process is not None
        if self._process.returncode is not None:
            raise AssertionError(f"the gateway exited:\n{self._log.read_text()}")
        match = LISTENING.search(self._log.read_text())
        self.port = int(match.group(1)) if match else 0
        return match is not None

    async def stop(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.send_signal(signal.SIGTERM)
            await self._process.wait()


@pytest.fixture
async def two_gateways(tmp_path: Path, write_config: Callable[..., Path],
                       redis_server: str) -> AsyncIterator[list[GatewayProcess]]:  # noqa: F811
    config = write_config(limits_config(tmp_path, redis_server, """
        [[limits]]
        name = "shared"
        models = ["demo"]
        rate = 1
        period_s = 3600
        burst = 50
        """, redis="lease_max_share = 0\n"))  # exact: every check asks Redis
    async with gateway_processes(config, tmp_path, 2) as gateways:
        yield gateways


@contextlib.asynccontextmanager
async def gateway_processes(config: Path, tmp_path: Path,
                            count: int) -> AsyncIterator[list[GatewayProcess]]:
    """`count` gateways started together on `config`, ready (models loaded), stopped on exit."""
    gateways = [GatewayProcess(config, tmp_path / f"gateway-{i}.log") for i in range(count)]
    try:
        await asyncio.gather(*(gateway.start() for gateway in gateways))
        await wait_until(lambda: all(g.listening() for g in gateways), within=60)
        async with aiohttp.ClientSession() as session:  # the doors open before the models load

            async def ready() -> bool:
                for gateway in gateways:
                    async with session.get(f"http://127.0.0.1:{gateway.port}/readyz") as reply:
                        if reply.status != 200:
                            return False
                return True

            await wait_until(ready, within=60)
        yield gateways
    finally:
        await asyncio.gather(*(gateway.stop() for gateway in gateways))


async def test_two_gateways_sharing_redis_let_exactly_the_burst_through(
        two_gateways: list[GatewayProcess]) -> None:
    async with aiohttp.ClientSession() as session:

        async def infer(port: int) -> int:
            async with session.post(f"http://127.0.0.1:{port}/v2/models/demo/infer",
                                    json=body(1)) as reply:
                await reply.read()
                assert reply.status == 200 or reply.headers["Retry-After"] == "3600"
                return reply.status

        statuses = await asyncio.gather(*(infer(two_gateways[i % 2].port) for i in range(200)))
    assert (statuses.count(200), statuses.count(429)) == (50, 150)
