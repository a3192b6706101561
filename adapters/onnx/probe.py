"""The load probe: a model file is loaded and warmed up first in a child process limited in
memory (RLIMIT_AS), CPU time and wall-clock time, so a hostile or broken graph costs the
gateway nothing but that child.

One check server per gateway process (started on the first check, ONNX Runtime imported once)
forks a child per check, so a check costs a fork rather than an interpreter start (~0.3 s). The
server runs one Python thread; importing ONNX Runtime starts one native thread that sleeps on a
condition variable, and forking beside it has been safe in every check so far (one that hung
would be killed at its timeout and refused). `check_model` is the gateway's side, `serve` the
check server's, `_check` the child's."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import itertools
import json
import math
import os
import resource
import selectors
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, NoReturn

import onnxruntime as ort

from adapters.onnx.session import ModelLoadError, OutOfMemory, SessionSettings, load_session


@dataclass(frozen=True)
class LoadLimits:
    timeout_s: float  # wall clock of the load and warm-up
    memory_bytes: int  # address space the load and warm-up may add to the child


@dataclass(frozen=True)
class ProbeReport:
    seconds: float  # the load and warm-up in the child
    peak_rss_bytes: int  # the child's peak resident memory
    at_rest_rss_bytes: int  # the child's resident memory before it loaded the model

    @property
    def load_rss_bytes(self) -> int:
        """What loading and warming up the model added at its peak."""
        return max(0, self.peak_rss_bytes - self.at_rest_rss_bytes)


_ROOT = Path(__file__).resolve().parents[2]  # the directory holding `adapters/`
_SERVER = ("import sys; sys.path.insert(0, sys.argv[1]); "
           "from adapters.onnx.probe import serve; serve()")
_SERVER_GRACE_S = 10.0  # past the check's own timeout, the server itself is stuck
_MAX_ERROR_CHARS = 2000


# The gateway's side


async def check_model(path: Path, settings: SessionSettings, limits: LoadLimits
                      ) -> ProbeReport:
    """Load and warm up `path` in a child process built like the gateway's sessions; raises
    `ModelLoadError` saying why it failed, naming the limit it broke."""
    server = _CheckServer.running()
    number, outcome = server.submit({
        "path": str(path), "settings": asdict(settings), "timeout_s": limits.timeout_s,
        "memory_bytes": limits.memory_bytes,
        # A backstop should the wall clock fail; the threads of a load may run in parallel.
        "cpu_seconds": math.ceil(limits.timeout_s * (os.cpu_count() or 1)) + 1})
    try:
        async with asyncio.timeout(limits.timeout_s + _SERVER_GRACE_S):
            return _verdict(await asyncio.shield(outcome), settings, limits)
    except TimeoutError:
        server.cancel(number)
        raise ModelLoadError("the model check server did not answer") from None
    except asyncio.CancelledError:
        server.cancel(number)
        raise


def checks_in_flight() -> int:
    """Checks submitted and not yet answered (their processes reaped) in this process."""
    server = _CheckServer.current
    return server.in_flight if server is not None else 0


def _verdict(outcome: dict[str, Any], settings: SessionSettings,
             limits: LoadLimits) -> ProbeReport:
    if outcome.get("server_died"):
        raise ModelLoadError("the model check server stopped during the check")
    if outcome.get("timed_out"):
        raise ModelLoadError(f"loading and warming up the model took longer than "
                             f"load_timeout_s = {limits.timeout_s:g} s")
    reply = outcome.get("reply")
    if isinstance(reply, dict) and "seconds" in reply:
        return ProbeReport(float(reply["seconds"]), int(reply["peak_rss_bytes"]),
                           int(reply["at_rest_rss_bytes"]))
    if isinstance(reply, dict) and "error" in reply:
        if reply.get("out_of_memory") == "arena":
            raise ModelLoadError(
                f"loading and warming up the model on one row needs more than "
                f"run_memory_bytes = {settings.run_memory_bytes} bytes "
                f"({_size(settings.run_memory_bytes)}) of ONNX Runtime memory")
        if reply.get("out_of_memory") == "process":
            raise ModelLoadError(
                f"loading and warming up the model on one row needs more than "
                f"load_memory_bytes = {limits.memory_bytes} bytes ({_size(limits.memory_bytes)})")
        raise ModelLoadError(str(reply["error"]))
    code = int(outcome.get("exit", 0))
    if code == -signal.SIGXCPU:
        raise ModelLoadError(f"loading and warming up the model used more CPU time than "
                             f"load_timeout_s = {limits.timeout_s:g} s allows")
    how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
    raise ModelLoadError(f"the process checking the model died ({how}) with "
                         f"load_memory_bytes = {limits.memory_bytes} bytes "
                         f"({_size(limits.memory_bytes)})")


def _size(n: int) -> str:
    return f"{n / 1024**3:.1f} GiB" if n >= 1024**3 else f"{n / 1024**2:.0f} MiB"


class _CheckServer:
    """The gateway's handle on the check server: requests go to its stdin as JSON lines, and
    a thread reads outcomes from its stdout and settles each on its caller's event loop."""

    current: ClassVar[_CheckServer | None] = None
    _starting: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def running(cls) -> _CheckServer:
        """The server, started if none runs. Call from the event loop's thread: the server
        dies with the thread that started it (`_die_with_parent`)."""
        with cls._starting:
            if cls.current is None or cls.current.dead or cls.current._process.poll() is not None:
                cls.current = cls()
            return cls.current

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-c", _SERVER, str(_ROOT)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            # One BLAS thread (numpy's; unused) keeps the server single-threaded for fork, and
            # glibc reserves 64 MiB of address space per malloc arena: keep RLIMIT_AS for data.
            env={**os.environ, "OPENBLAS_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"})
        self._lock = threading.Lock()
        self._waiting: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future[Any]]] = {}
        self._numbers = itertools.count()
        self.dead = False
        threading.Thread(target=self._read_outcomes, name="onnx-check-server",
                         daemon=True).start()
        atexit.register(self._stop)

    @property
    def in_flight(self) -> int:
        return len(self._waiting)

    def submit(self, request: dict[str, Any]) -> tuple[int, asyncio.Future[Any]]:
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[Any] = loop.create_future()
        with self._lock:
            number = next(self._numbers)
            self._waiting[number] = (loop, outcome)
            try:
                self._send({"id": number, **request})
            except OSError:
                del self._waiting[number]
                self.dead = True
                raise ModelLoadError("the model check server is not running") from None
        return number, outcome

    def cancel(self, number: int) -> None:
        """Kill the check's process; its outcome still comes (and is dropped)."""
        with self._lock, contextlib.suppress(OSError):
            if number in self._waiting:
                self._send({"cancel": number})

    def _send(self, message: dict[str, Any]) -> None:
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps(message).encode() + b"\n")
        self._process.stdin.flush()

    def _read_outcomes(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            try:
                outcome = json.loads(line)
            except ValueError:
                continue
            if isinstance(outcome, dict):
                with self._lock:
                    waiting = self._waiting.pop(outcome.get("id", -1), None)
                if waiting is not None:
                    _settle(waiting, outcome)
        with self._lock:
            self.dead = True
            waiting_all, self._waiting = list(self._waiting.values()), {}
        for waiting in waiting_all:
            _settle(waiting, {"server_died": True})

    def _stop(self) -> None:
        with contextlib.suppress(OSError):
            if self._process.stdin is not None:
                self._process.stdin.close()  # the server kills its checks and exits
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout=5)


def _settle(waiting: tuple[asyncio.AbstractEventLoop, asyncio.Future[Any]],
            outcome: dict[str, Any]) -> None:
    loop, future = waiting

    def settle() -> None:
        if not future.done():
            future.set_result(outcome)

    with contextlib.suppress(RuntimeError):  # that event loop is closed
        loop.call_soon_threadsafe(settle)


# The check server's side


@dataclass(eq=False)
class _Running:
    number: int
    pid: int
    pidfd: int  # readable once the child exits
    verdict: int  # read end of the child's verdict pipe
    deadline: float
    timed_out: bool = False
    killed: bool = False


def serve() -> None:
    """Read check requests (one JSON line each) from stdin, fork a child per check, kill it
    at its deadline or when cancelled, and write each outcome as a JSON line to stdout."""
    _die_with_parent()
    selector = selectors.DefaultSelector()
    selector.register(0, selectors.EVENT_READ)
    running: dict[int, _Running] = {}
    unread = b""
    while True:
        deadlines = [c.deadline for c in running.values() if not c.killed]
        timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
        for key, _ in selector.select(timeout):
            if key.data is None:
                data = os.read(0, 65536)
                if not data:  # the gateway is gone
                    for check in running.values():
                        _kill(check)
                    return
                *lines, unread = (unread + data).split(b"\n")
                for line in lines:
                    _handle(json.loads(line), running, selector)
            else:
                selector.unregister(key.fd)
                _finish(running.pop(key.data.number))
        now = time.monotonic()
        for check in running.values():
            if not check.killed and now >= check.deadline:
                check.timed_out = True
                _kill(check)


def _handle(message: dict[str, Any], running: dict[int, _Running],
            selector: selectors.BaseSelector) -> None:
    if "cancel" in message:
        if (check := running.get(int(message["cancel"]))) is not None:
            _kill(check)
        return
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        _check_child(message, write_end)
    os.close(write_end)
    check = _Running(int(message["id"]), pid, os.pidfd_open(pid), read_end,
                     time.monotonic() + float(message["timeout_s"]))
    running[check.number] = check
    selector.register(check.pidfd, selectors.EVENT_READ, check)


def _kill(check: _Running) -> None:
    check.killed = True
    with contextlib.suppress(ProcessLookupError):
        os.kill(check.pid, signal.SIGKILL)


def _finish(check: _Running) -> None:
    chunks = []
    while chunk := os.read(check.verdict, 65536):
        chunks.append(chunk)
    os.close(check.verdict)
    os.close(check.pidfd)
    _, status = os.waitpid(check.pid, 0)
    try:
        reply = json.loads(b"".join(chunks)) if chunks else None
    except ValueError:
        reply = None
    outcome = {"id": check.number, "exit": os.waitstatus_to_exitcode(status),
               "timed_out": check.timed_out, "reply": reply}
    os.write(1, json.dumps(outcome).encode() + b"\n")


# The child's side


def _check_child(request: dict[str, Any], verdict: int) -> NoReturn:
    code = 0
    try:
        os.dup2(2, 1)  # stdout is the server's channel to the gateway
        _die_with_parent()
        reply = _check(request)
        os.write(verdict, json.dumps(reply).encode())
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def _check(request: dict[str, Any]) -> dict[str, Any]:
    """Load and warm up one model under the limits the request names."""
    ort.set_default_logger_severity(4)  # failures come back in the reply; no log lines
    path = str(request["path"])
    at_rest = _reset_peak_rss()
    _limit(resource.RLIMIT_AS, _address_space_bytes() + int(request["memory_bytes"]))
    _limit(resource.RLIMIT_CPU, int(request["cpu_seconds"]))
    started = time.monotonic()
    try:
        load_session(path, SessionSettings(**request["settings"]))
    except OutOfMemory as exc:
        return {"error": str(exc)[:_MAX_ERROR_CHARS],
                "out_of_memory": "arena" if exc.arena else "process"}
    except MemoryError:
        return {"error": "out of memory", "out_of_memory": "process"}
    except ModelLoadError as exc:  # where the file lies is the gateway's business
        return {"error": str(exc).replace(path, Path(path).name)[:_MAX_ERROR_CHARS]}
    return {"seconds": time.monotonic() - started, "at_rest_rss_bytes": at_rest,
            "peak_rss_bytes": _peak_rss_bytes()}


def _die_with_parent() -> None:
    """Linux: the kernel kills this process when the thread that started it ends, so neither
    the server nor a check outlives a gateway that was killed."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before prctl
        os._exit(1)


def _limit(which: int, value: int) -> None:
    _, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(which, (value, hard if which == resource.RLIMIT_CPU else value))


def _address_space_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> int:
    """Start the peak over from here (what the fork inherited may have peaked higher); the
    resident memory now."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # resets VmHWM to VmRSS
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
