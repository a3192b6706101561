"""A real `gateway serve` process for tests that check what a deployment runs: a config file as
it would be mounted, the environment a pod would get, free ports, its log in a file (never a
pipe the gateway could block on), stopped with SIGTERM as Kubernetes and Docker stop it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent.parent
LISTENING = re.compile(r"listening on (http|grpc)s?://127\.0\.0\.1:(\d+)")  # s: TLS


class GatewayProcess:
    def __init__(self, process: subprocess.Popen[bytes], log: Path, ports: dict[str, int]) -> None:
        self.process = process
        self.log = log
        self.http_port = ports["http"]
        self.grpc_port = ports["grpc"]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def get(self, path: str, headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
        """Status and body of a GET (an error status is returned, not raised)."""
        request = urllib.request.Request(self.url(path), headers=dict(headers or {}))
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                return reply.status, reply.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def metric(self, name: str, **labels: str) -> float | None:
        """The value of the sample `name` with exactly these labels on /metrics, if exported."""
        _, body = self.get("/metrics")
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return sample.value
        return None

    def wait_until(self, condition: str, check: Callable[[], bool], within: float = 60.0) -> None:
        """Poll `check()` until it is true; fail with the gateway's log after `within` s."""
        deadline = time.monotonic() + within
        while not check():
            assert self.process.poll() is None, f"gateway exited:\n{self.log_text()}"
            assert time.monotonic() < deadline, \
                f"not {condition} within {within} s:\n{self.log_text()[-4000:]}"
            time.sleep(0.02)

    def wait_ready(self, path: str = "/readyz", within: float = 60.0) -> None:
        self.wait_until("ready", lambda: self.get(path)[0] == 200, within)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def gateway_process(config: Path, log: Path, env: Mapping[str, str] | None = None,
                    cwd: Path = ROOT) -> Iterator[GatewayProcess]:
    """`gateway serve --config CONFIG` on free ports (the file's ports are overridden), with
    `env` added to this process's environment; yields once both doors listen."""
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config),
             "--http-port", "0", "--grpc-port", "0"],
            cwd=cwd, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
            stderr=sink)
    try:
        yield GatewayProcess(process, log, _ports(log, process))
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _ports(log: Path, process: subprocess.Popen[bytes]) -> dict[str, int]:
    """The ports the gateway logs once both doors listen (waited on, not slept for)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = dict(LISTENING.findall(log.read_text(errors="replace")))
        if len(found) == 2:
            return {door: int(port) for door, port in found.items()}
        assert process.poll() is None, log.read_text(errors="replace")
        time.sleep(0.02)
    raise AssertionError("gateway did not report both ports:\n" + log.read_text())
