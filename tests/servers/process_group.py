"""A real server the tests start as a process group of its own (it forks model workers): wait
for it to be ready while it lives, and end the whole group after. `ServerProcess` is that for a
v2 server (Triton, MLServer) serving a model repository over HTTP and gRPC on free ports."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tests.servers.torchserve_server import free_port


def start(command: list[str], *, cwd: Path, env: dict[str, str],
          log: Path) -> subprocess.Popen[bytes]:
    """`command` in a new session (its own process group), its output into `log`."""
    with log.open("wb") as out:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def wait_ready(process: subprocess.Popen[bytes], ready: Callable[[], bool], *, name: str,
               timeout_s: float, log: Path) -> None:
    """Returns once `ready()`; raises with the log's tail if `process` exits or time is up."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} not ready within {timeout_s} s:\n{tail(log)}")
        time.sleep(0.1)  # polling interval, not a wait for something to happen


def stop(process: subprocess.Popen[bytes] | None, timeout_s: float = 30.0) -> None:
    """SIGTERM to the group, SIGKILL after `timeout_s`; returns when no member is left."""
    if process is None or process.poll() is not None:
        return
    group = process.pid  # the session leader: its pid is the group's id
    os.killpg(group, signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(group, signal.SIGKILL)
        process.wait()
    deadline = time.monotonic() + timeout_s
    while _alive(group):  # workers may outlive the leader by a moment
        if time.monotonic() > deadline:
            os.killpg(group, signal.SIGKILL)
        time.sleep(0.05)  # polling interval


def tail(log: Path, lines: int = 40) -> str:
    text = log.read_text(errors="replace") if log.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def _alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


class ServerProcess:
    """One server on 127.0.0.1, HTTP and gRPC on free ports; a kind says how to run it
    (`command`, `env`) and which HTTP path answers 200 once it serves (`ready_path`)."""

    name = "server"  # in messages, and its log's file name
    ready_path = "/v2/health/ready"
    start_timeout_s = 120.0
    stop_timeout_s = 30.0

    def __init__(self, repository: Path, workdir: Path) -> None:
        self.repository = repository
        self.workdir = workdir
        self.http_port = free_port()
        self.grpc_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def log(self) -> Path:
        return self.workdir / f"{self.name}.out"

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def start(self) -> None:
        command = self.command()  # first: it fails the test if the server is not installed
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = start(command, cwd=self.workdir, env=self.env(), log=self.log)
        try:
            wait_ready(self.process, self.ready, name=self.name,
                       timeout_s=self.start_timeout_s, log=self.log)
        except BaseException:
            self.stop()
            raise

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.http_url + self.ready_path, timeout=2) as reply:
                return bool(reply.status == 200)
        except OSError:  # refused, reset, or an HTTP error (HTTPError) while models load
            return False

    def stop(self) -> None:
        stop(self.process, self.stop_timeout_s)

    def gateway_toml(self, adapter: str, models: dict[str, str]) -> str:
        """Gateway TOML routing `models` (name -> more TOML lines for its table) to this
        server's gRPC port as a `kind = "v2"` backend named `adapter`."""
        lines = [f"[adapters.{adapter}]", 'kind = "v2"', f'endpoints = ["{self.grpc_address}"]',
                 "connect_timeout_s = 1", ""]
        for model, extra in models.items():
            lines += [f"[models.{model}]", f'adapter = "{adapter}"', extra, ""]
        return "\n".join(lines)
