"""A real `redis-server` for tests: a free port on 127.0.0.1, no persistence, killable.

Import a fixture into a test module (`from tests.redis_server import redis_server`):
`redis_server` yields the URL; `redis_process` yields a `RedisServer` (`.url`) for tests that
kill, restart or freeze it. Each stands alone, so importing one is enough.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Iterator, Sequence

import pytest

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith((b"+PONG", b"-NOAUTH"))  # up, with a password
    except OSError:
        return False


class RedisServer:
    """One redis-server process; `kill` and `restart` keep the port so clients reconnect.
    `args` go first on its command line: a config file, `--sentinel`, cluster options."""

    def __init__(self, port: int, args: Sequence[str] = ()) -> None:
        self.port = port
        self.args = tuple(args)
        self.url = f"redis://127.0.0.1:{port}/0"
        self._process: subprocess.Popen[bytes] | None = None
        # Its working directory, where it reads and writes dump.rdb unless `args` say `--dir`
        # (a replica's full sync writes one even with `--save ""`): never the checkout, where
        # the next server started there would load another test's data.
        self._directory = tempfile.mkdtemp(prefix=f"redis-{port}-")
        weakref.finalize(self, shutil.rmtree, self._directory, True)

    def start(self, within: float = 10.0) -> None:
        self._process = subprocess.Popen(
            [REDIS_SERVER, *self.args, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--daemonize", "no"],
            cwd=self._directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + within
        while not answers_ping(self.port):
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._process.returncode} "
                                   f"on port {self.port}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server did not answer PING within {within} s")
            time.sleep(0.01)

    def kill(self) -> None:
        """SIGKILL: the crash case, no shutdown handshake with clients. Also how tests stop it:
        the data is throwaway, and it ends a frozen server too."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def restart(self) -> None:
        """Kill (if running) and start again on the same port, empty."""
        self.kill()
        self.start()

    def freeze(self) -> None:
        """SIGSTOP: connections are accepted by the kernel but never answered (a hung server)."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)


@contextlib.contextmanager
def running_redis(attempts: int = 3) -> Iterator[RedisServer]:
    """A started server, killed on exit. Another process may take the free port between our
    probe and redis binding it, so start tries a few ports."""
    for _ in range(attempts):
        server = RedisServer(free_port())
        try:
            server.start()
        except RuntimeError:
            continue
        try:
            yield server
        finally:
            server.kill()
        return
    raise RuntimeError(f"redis-server did not start in {attempts} attempts")


@pytest.fixture
def redis_server() -> Iterator[str]:
    """The URL of a fresh, empty redis-server that stops after the test."""
    with running_redis() as server:
        yield server.url


@pytest.fixture
def redis_process() -> Iterator[RedisServer]:
    """The same, as a handle the test can kill, restart or freeze (use it instead of
    `redis_server`, not with it: each fixture starts its own server)."""
    with running_redis() as server:
        yield server
