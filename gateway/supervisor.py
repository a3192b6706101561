"""`gateway serve --workers N`: N worker processes, each a whole gateway (both doors, every
model loaded) on the same claimed ports (gateway/ports.py; the kernel spreads connections
over their SO_REUSEPORT listeners), and this small supervisor over them.

It starts the workers as new interpreters (`gateway serve ... --worker I`, gateway/worker.py)
and fails the start, stopping the others, if one dies before both its doors listen. A worker
that dies later is restarted after a delay that doubles while it keeps dying (reset once one
served for `STABLE_S`); it gives up, stopping everything, once one dies before serving
`MAX_START_FAILURES` times in a row. SIGTERM and SIGINT are forwarded and the workers given
their drain time; SIGHUP (reload the policy files) is forwarded. The exit status is non-zero
when it could not serve, or a worker did not stop cleanly. The supervisor also relays the
routing policy among the workers (gateway/policy/relay.py) and prepares the directory their
metrics share (gateway/worker_metrics.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from gateway.channel import PUBLISH, READY, REPLY, VERSIONS, Channel, Message
from gateway.config import GatewayConfig
from gateway.policy.relay import PolicyRelay
from gateway.worker_metrics import MULTIPROCESS_ENV, prepare_multiprocess, worker_exited

log = logging.getLogger("gateway.supervisor")

FIRST_RESTART_DELAY_S = 0.5
MAX_RESTART_DELAY_S = 30.0
STABLE_S = 30.0  # a worker that served this long resets the restart delay
MAX_START_FAILURES = 4  # in a row, for one worker, before it served
STOP_MARGIN_S = 15.0  # past drain_delay_s + shutdown_timeout_s: closing adapters and the rest
_CLEAN_EXITS = {0, -signal.SIGTERM, -signal.SIGINT}  # SIGTERM before a worker's handler is set


def exit_reason(returncode: int) -> str:
    if returncode >= 0:
        return f"exited with status {returncode}"
    try:
        return f"was killed by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"was killed by signal {-returncode}"


@dataclass
class Worker:
    index: int
    process: asyncio.subprocess.Process
    channel: Channel
    ready_at: float | None = None  # monotonic time it said both doors listen
    relay: asyncio.Task[None] | None = field(default=None, repr=False)


class Supervisor:
    def __init__(self, config: GatewayConfig) -> None:
        """`config` with the ports claimed (gateway/ports.py): every worker binds those."""
        self._config = config
        self._count = config.server.workers
        self._relay = PolicyRelay(config.policies.history)
        self._workers: dict[int, Worker] = {}
        self._serving = False  # every worker reported ready once
        self._failure = ""  # why it could not serve
        self._unclean: list[str] = []  # workers that did not stop cleanly
        self._metrics_dir = Path()
        self._env: dict[str, str] = {}  # the workers' environment
        self._stop = asyncio.Event()
        self._started = asyncio.Event()

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT; the exit status."""
        own_dir = MULTIPROCESS_ENV not in os.environ
        self._metrics_dir = Path(os.environ.get(MULTIPROCESS_ENV)
                                 or tempfile.mkdtemp(prefix="gateway-metrics-"))
        try:
            return asyncio.run(self._run())
        finally:
            if own_dir:
                shutil.rmtree(self._metrics_dir, ignore_errors=True)

    async def _run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._request_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self._forward, signal.SIGHUP)
        self._env = {**os.environ, **prepare_multiprocess(self._metrics_dir)}
        slots = [loop.create_task(self._keep(index), name=f"worker {index}")
                 for index in range(self._count)]
        for slot in slots:
            slot.add_done_callback(self._slot_ended)
        stop, started = loop.create_task(self._stop.wait()), loop.create_task(self._started.wait())
        await asyncio.wait({started, stop}, return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        if self._started.is_set():
            server = self._config.server
            tls = "s" if server.tls is not None else ""
            log.info("%d workers serving http%s://%s:%d and grpc%s://%s:%d", self._count,
                     tls, server.host, server.http_port, tls, server.host, server.grpc_port)
        await stop
        await self._stop_workers(slots)
        if self._failure:
            return 1
        if self._unclean:
            log.error("workers that did not stop cleanly: %s", "; ".join(self._unclean))
            return 1
        return 0

    def _request_stop(self, sig: signal.Signals) -> None:
        log.info("%s: %s", sig.name, "the workers hurry their drain" if self._stop.is_set()
                 else "stopping the workers")
        self._stop.set()
        self._forward(signal.SIGTERM)

    def _fail(self, why: str) -> None:
        if not self._failure:
            self._failure = why
            log.error("could not serve: %s; stopping the workers", why)
        self._stop.set()
        self._forward(signal.SIGTERM)

    def _forward(self, sig: signal.Signals) -> None:
        for worker in self._workers.values():
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(sig)

    async def _stop_workers(self, slots: list[asyncio.Task[None]]) -> None:
        server = self._config.server
        limit = server.drain_delay_s + server.shutdown_timeout_s + STOP_MARGIN_S
        _, late = await asyncio.wait(slots, timeout=limit)
        if late:
            for worker in self._workers.values():
                log.error("worker %d (pid %d) still running %.0f s after SIGTERM; killing it",
                          worker.index, worker.process.pid, limit)
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()
            await asyncio.wait(slots)

    def _slot_ended(self, slot: asyncio.Task[None]) -> None:
        if not slot.cancelled() and slot.exception() is not None:
            log.error("%s: supervising failed", slot.get_name(), exc_info=slot.exception())
            self._fail(f"{slot.get_name()}: {slot.exception()}")

    async def _keep(self, index: int) -> None:
        """Run worker `index` until the supervisor stops, restarting it when it dies."""
        restarts = unready = 0
        while True:
            worker = await self._spawn(index)
            returncode = await worker.process.wait()
            del self._workers[index]
            worker_exited(worker.process.pid, self._metrics_dir)
            if worker.relay is not None:
                await worker.relay  # ends when the worker's end of the channel closes
            reason = exit_reason(returncode)
            if self._stop.is_set():
                if returncode not in _CLEAN_EXITS:
                    self._unclean.append(f"worker {index} {reason}")
                return
            if worker.ready_at is None:
                unready += 1
                if not self._serving or unready >= MAX_START_FAILURES:
                    times = f", {unready} times in a row" if self._serving else ""
                    self._fail(f"worker {index} {reason} before it was ready{times}")
                    return
            else:
                unready = 0
                if time.monotonic() - worker.ready_at >= STABLE_S:
                    restarts = 0
            delay = min(FIRST_RESTART_DELAY_S * 2 ** restarts, MAX_RESTART_DELAY_S)
            restarts += 1
            log.error("worker %d (pid %d) %s; restarting it in %.1f s", index,
                      worker.process.pid, reason, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            if self._stop.is_set():
                return

    async def _spawn(self, index: int) -> Worker:
        server = self._config.server
        ours, theirs = socket.socketpair()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway", "serve", "--config", str(self._config.source),
                "--http-port", str(server.http_port), "--grpc-port", str(server.grpc_port),
                "--worker", str(index), "--channel-fd", str(theirs.fileno()),
                pass_fds=(theirs.fileno(),), env=self._env,
                # A terminal's Ctrl-C reaches the supervisor alone, which forwards one SIGTERM:
                # a worker takes a second signal as "hurry the drain".
                process_group=0)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        worker = Worker(index, process, await Channel.open(ours))
        worker.relay = asyncio.get_running_loop().create_task(self._serve(worker))
        self._workers[index] = worker
        if self._stop.is_set():  # it started while the others were told to stop
            process.send_signal(signal.SIGTERM)
        return worker

    async def _serve(self, worker: Worker) -> None:
        """Answer one worker's messages until its end of the channel closes."""
        try:
            while (message := await worker.channel.receive()) is not None:
                try:
                    await self._answer(worker, message)
                except Exception:  # one bad message must not end the supervision
                    log.exception("worker %d: answering %r failed", worker.index,
                                  message.get("kind"))
        finally:
            worker.channel.close()

    async def _answer(self, worker: Worker, message: Message) -> None:
        kind = message.get("kind")
        if kind == READY:
            worker.ready_at = time.monotonic()
            log.info("worker %d (pid %d) serving", worker.index, worker.process.pid)
            if all(w.ready_at is not None for w in self._workers.values()) and len(
                    self._workers) == self._count and not self._serving:
                self._serving = True
                self._started.set()
        elif kind == PUBLISH:
            reply, announcement = self._relay.publish(message)
            await self._send(worker, {"kind": REPLY, "id": message["id"], **reply})
            if announcement is not None:
                for other in list(self._workers.values()):
                    await self._send(other, announcement)
        elif kind == VERSIONS:
            await self._send(worker, {"kind": REPLY, "id": message["id"],
                                      **self._relay.versions()})
        else:
            log.warning("worker %d sent an unknown message %r", worker.index, kind)

    @staticmethod
    async def _send(worker: Worker, message: Message) -> None:
        with contextlib.suppress(ConnectionError):  # it is exiting; its slot restarts it
            await worker.channel.send(message)
