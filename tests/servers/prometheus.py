"""A real Prometheus for the tests (Debian's `prometheus`, `make system-deps`): the deployed
`deploy/prometheus.yml` with its targets pointed at gateways under test and its intervals cut
to `INTERVAL`, its alerting rules loaded from `deploy/rules/`, exemplar storage on, data in a
temporary directory, listening on a free 127.0.0.1 port. `query()` and friends read its HTTP API.
The `start_prometheus` fixture starts them and stops them after the test."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.redis_server import free_port

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
INSTALL = "make system-deps (apt-get install -y prometheus)"
#: how often the test Prometheus scrapes and evaluates rules
INTERVAL = "500ms"


def require_prometheus() -> None:
    """Fails (never skips) the test when Prometheus is missing, saying what to install."""
    if not (Path(PROMETHEUS).exists() and Path(PROMTOOL).exists()):
        pytest.fail(f"Prometheus tests need prometheus and promtool: {INSTALL}", pytrace=False)


def scrape_config(targets: Sequence[str]) -> dict[str, Any]:
    """deploy/prometheus.yml for `targets` ("host:port"), scraping every `INTERVAL`."""
    config: dict[str, Any] = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    config["global"].update(scrape_interval=INTERVAL, evaluation_interval=INTERVAL)
    config["rule_files"] = [str(DEPLOY / path) for path in config["rule_files"]]
    for scrape in config["scrape_configs"]:
        scrape["static_configs"] = [{"targets": list(targets)}]
    return config


class PrometheusServer:
    def __init__(self, workdir: Path, targets: Sequence[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._workdir = workdir
        self._targets = targets
        self._process: subprocess.Popen[bytes] | None = None

    def launch(self) -> subprocess.Popen[bytes]:
        config = self._workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(scrape_config(self._targets)))
        self._log = (self._workdir / "prometheus.log").open("wb")
        return subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={self._workdir}/data",
             f"--web.listen-address=127.0.0.1:{self.port}", "--enable-feature=exemplar-storage",
             "--log.level=warn"], stdout=self._log, stderr=subprocess.STDOUT)

    async def start(self, within: float = 30.0) -> None:
        self._process = self.launch()
        deadline = time.monotonic() + within
        async with aiohttp.ClientSession() as session:
            while True:
                if self._process.poll() is not None:
                    raise RuntimeError(f"prometheus exited with {self._process.returncode}:\n"
                                       + (self._workdir / "prometheus.log").read_text()[-2000:])
                try:
                    async with session.get(f"{self.url}/-/ready") as reply:
                        if reply.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"prometheus was not ready within {within} s")
                await asyncio.sleep(0.05)

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._process is not None:
            self._log.close()

    async def api(self, path: str, **params: str) -> Any:
        """The `data` of an HTTP API answer; fails on an API error (a bad query included)."""
        async with aiohttp.ClientSession() as session, session.get(
                f"{self.url}/api/v1/{path}", params=params) as reply:
            document = await reply.json()
        assert document["status"] == "success", (path, params, document)
        return document["data"]

    async def query(self, expression: str) -> list[dict[str, Any]]:
        """An instant query's result, evaluated now."""
        data = await self.api("query", query=expression, time=f"{time.time():.3f}")
        result: list[dict[str, Any]] = data["result"]
        return result


StartPrometheus = Callable[[Sequence[str]], Awaitable[PrometheusServer]]


@pytest.fixture
async def start_prometheus(tmp_path: Path) -> AsyncIterator[StartPrometheus]:
    """`await start_prometheus(["127.0.0.1:port", ...])`: a running Prometheus scraping them."""
    require_prometheus()
    started: list[PrometheusServer] = []

    async def start(targets: Sequence[str]) -> PrometheusServer:
        workdir = tmp_path / f"prometheus{len(started)}"
        workdir.mkdir()
        server = PrometheusServer(workdir, targets)
        started.append(server)
        await server.start()
        return server

    yield start
    for server in started:
        server.stop()
