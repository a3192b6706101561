"""Real Redis deployments for tests, from Debian's redis-server on free loopback ports in a temp
directory: a Cluster of 3 masters + 3 replicas, and a master with 2 replicas watched by 3
sentinels. Both fail over within seconds (short node timeouts) and `heal` brings a killed
server back, as a replica, so a module-scoped deployment serves every test of a file.

Fixtures: `redis_cluster` (a `LocalCluster`) and `redis_sentinel` (a `LocalSentinel`), each
module-scoped: import the one a test module needs. `exact_admissions`, `failover_under_load`
and `policy_follows_failover` are the scenarios both deployments are held to.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient
from redis.crc import key_slot

from gateway.errors import GatewayError, RateLimited, Unavailable
from gateway.metrics import GatewayMetrics
from gateway.ratelimit import RateLimiter
from tests.policy_support import pinned_policy, predict
from tests.redis_server import RedisServer, free_port
from tests.test_ratelimit_gcra import attempt, infer_request
from tests.test_ratelimit_redis_down import answered, decisions
from tests.waiting import wait_until

REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
NODE_TIMEOUT_MS = 1000  # a master silent this long is failed over
SERVICE = "gateway-master"
# The sentinel setup is password-protected, as managed ones are: the data nodes by one, the
# sentinels themselves by another.
PASSWORD = "data-secret"
SENTINEL_PASSWORD = "sentinel-secret"


def cli(port: int, *args: str, password: str = "") -> str:
    """A command's reply as redis-cli prints it ("" when the server does not answer)."""
    done = subprocess.run([REDIS_CLI, "-h", "127.0.0.1", "-p", str(port), *args],
                          capture_output=True, text=True, timeout=10, check=False,
                          env={**os.environ, "REDISCLI_AUTH": password} if password else None)
    return done.stdout.strip() if done.returncode == 0 else ""


def info(port: int, *command: str, password: str = "") -> dict[str, str]:
    """The `field:value` lines of INFO SECTION (or of `command`, e.g. CLUSTER INFO)."""
    lines = cli(port, *(command if len(command) > 1 else ("INFO", *command)),
                password=password).splitlines()
    return dict(line.split(":", 1) for line in lines if ":" in line)


def wait_for(condition: str, check: Callable[[], bool], within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"not {condition} within {within} s"
        time.sleep(0.05)


class _Deployment:
    """Servers that can be killed one by one and brought back; all stopped at the end."""

    def __init__(self) -> None:
        self.servers: dict[int, RedisServer] = {}
        self.down: set[int] = set()

    def add(self, args: tuple[str, ...]) -> RedisServer:
        server = RedisServer(free_port(), args)
        server.start()
        self.servers[server.port] = server
        return server

    def kill(self, port: int) -> None:
        self.servers[port].kill()
        self.down.add(port)

    def live(self) -> list[int]:
        return [port for port in self.servers if port not in self.down]

    def stop(self) -> None:
        for server in self.servers.values():
            server.kill()


class LocalCluster(_Deployment):
    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.directory = directory

    @property
    def url(self) -> str:
        """One node's URL, as `[redis] url` gives it (the client learns the others)."""
        return f"redis://127.0.0.1:{next(iter(self.servers))}"

    def start(self) -> None:
        for _ in range(6):
            port, bus = free_port(), free_port()
            self.add(("--cluster-enabled", "yes", "--cluster-port", str(bus),
                      "--cluster-config-file", str(self.directory / f"nodes-{port}.conf"),
                      "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                      # a replica takes over however long ago it last heard its master
                      "--cluster-replica-validity-factor", "0", "--dir", str(self.directory)))
        created = subprocess.run(
            [REDIS_CLI, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.servers),
             "--cluster-replicas", "1", "--cluster-yes"],
            capture_output=True, text=True, timeout=60, check=False)
        assert created.returncode == 0, created.stdout + created.stderr
        self.wait_healthy()

    def wait_healthy(self, within: float = 30.0) -> None:
        """Every live node sees the cluster ok, three masters, and every replica in sync."""
        def healthy() -> bool:
            for port in self.live():
                if info(port, "CLUSTER", "INFO").get("cluster_state") != "ok":
                    return False
            roles = [info(port, "replication") for port in self.live()]
            masters = [r for r in roles if r.get("role") == "master"]
            return len(masters) == 3 and all(
                r.get("master_link_status") == "up" for r in roles if r.get("role") == "slave")
        wait_for("a healthy cluster", healthy, within)

    def masters(self) -> list[int]:
        return [port for port in self.live() if info(port, "replication")["role"] == "master"]

    def master_of(self, key: str) -> int:
        """The port of the master that holds `key`'s slot now."""
        slot = key_slot(key.encode())
        for line in cli(self.live()[0], "CLUSTER", "NODES").splitlines():
            fields = line.split()
            if "master" not in fields[2] or "fail" in fields[2]:
                continue
            for span in fields[8:]:
                first, _, last = span.partition("-")
                if first.isdigit() and int(first) <= slot <= int(last or first):
                    return int(fields[1].split("@")[0].rpartition(":")[2])
        raise AssertionError(f"no live master holds slot {slot}")

    def heal(self) -> None:
        """Start every killed node again: it rejoins as a replica of its promoted one."""
        for port in sorted(self.down):
            self.servers[port].start()
        self.down.clear()
        self.wait_healthy()


class LocalSentinel(_Deployment):
    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.directory = directory
        self.sentinels: list[int] = []

    def start(self) -> None:
        master = self.add(self._data_args()).port
        for _ in range(2):
            self.add(self._data_args(master))
        for n in range(3):
            conf = self.directory / f"sentinel-{n}.conf"  # sentinels rewrite their file
            conf.write_text(f"sentinel monitor {SERVICE} 127.0.0.1 {master} 2\n"
                            f"sentinel down-after-milliseconds {SERVICE} {NODE_TIMEOUT_MS}\n"
                            f"sentinel failover-timeout {SERVICE} 5000\n"
                            f"sentinel auth-pass {SERVICE} {PASSWORD}\n"
                            f"requirepass {SENTINEL_PASSWORD}\n"
                            f"sentinel sentinel-pass {SENTINEL_PASSWORD}\n"
                            f"dir {self.directory}\n")
            sentinel = RedisServer(free_port(), (str(conf), "--sentinel"))
            sentinel.start()
            self.sentinels.append(sentinel.port)
            self.servers[sentinel.port] = sentinel
        self.wait_healthy()

    def _data_args(self, master: int | None = None) -> tuple[str, ...]:
        """A data node's: its password, its directory (a full sync writes dump.rdb there),
        and whose replica it is."""
        directory = self.directory / f"data-{len(self.servers)}"
        directory.mkdir(exist_ok=True)
        replica = ("--replicaof", "127.0.0.1", str(master)) if master else ()
        return ("--requirepass", PASSWORD, "--masterauth", PASSWORD, "--dir", str(directory),
                *replica)

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.sentinels]

    def master(self) -> int:
        """The master's port, as every sentinel reports it."""
        answers = {cli(port, "SENTINEL", "get-master-addr-by-name", SERVICE,
                       password=SENTINEL_PASSWORD)
                   for port in self.sentinels}
        assert len(answers) == 1, f"the sentinels disagree: {answers}"
        return int(answers.pop().split()[-1])

    def wait_healthy(self, within: float = 30.0) -> None:
        """Every sentinel knows the other two and two replicas in sync with the master."""
        def healthy() -> bool:
            for port in self.sentinels:
                lines = cli(port, "SENTINEL", "master", SERVICE,
                            password=SENTINEL_PASSWORD).splitlines()
                state = dict(zip(lines[::2], lines[1::2], strict=False))  # field, value, ...
                if (state.get("num-other-sentinels") != "2" or state.get("num-slaves") != "2"
                        or "down" in state.get("flags", "down")):
                    return False
            master = self.master()
            replicas = [info(port, "replication", password=PASSWORD) for port in self.live()
                        if port not in self.sentinels and port != master]
            return len(replicas) == 2 and all(
                r.get("master_link_status") == "up" and r.get("master_port") == str(master)
                for r in replicas)
        wait_for("a healthy sentinel setup", healthy, within)

    def heal(self) -> None:
        """Start every killed server again, as a replica of the master (the sentinels would
        make it one too, only later)."""
        master = self.master()
        for port in sorted(self.down):
            self.servers[port] = RedisServer(port, self._data_args(master))
            self.servers[port].start()
        self.down.clear()
        wait_for("replicas counted again", lambda: all(
            "s_down" not in cli(port, "SENTINEL", "replicas", SERVICE,
                                password=SENTINEL_PASSWORD)
            for port in self.sentinels))
        self.wait_healthy()


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSentinel]:
    sentinel = LocalSentinel(tmp_path_factory.mktemp("sentinel"))
    try:
        sentinel.start()
        yield sentinel
    finally:
        sentinel.stop()


# The scenarios. Rules are made by the test; `model` names pick the bucket (and so the node).


async def exact_admissions(limiter: RateLimiter, model: str, subject: str, tries: int) -> int:
    """How many of `tries` concurrent checks pass; every other one must be refused (429)."""
    errors = await asyncio.gather(*(attempt(limiter, infer_request(model, subject))
                                    for _ in range(tries)))
    assert all(error is None or isinstance(error, RateLimited) for error in errors), errors
    return sum(error is None for error in errors)


@dataclass(frozen=True)
class Outcome:
    model: str
    started: float
    elapsed: float
    error: GatewayError | None
    answered: bool  # Redis decided (RateLimit-* set), rather than `on_redis_error`


class LoopStalls:
    """When this process's event loop ran late, and by how much: on a busy machine the
    process is not scheduled for a while and every wait it was doing runs long, whatever the
    code under test bounds it to. A wait's own part is what is left without the stalls."""

    PERIOD_S = 0.005

    def __init__(self) -> None:
        self.ticks: list[tuple[float, float]] = []  # (from, to) of each late wake-up

    async def watch(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            began = time.monotonic()
            await asyncio.sleep(self.PERIOD_S)
            ended = time.monotonic()
            if ended - began > 2 * self.PERIOD_S:
                self.ticks.append((began + self.PERIOD_S, ended))

    def within(self, start: float, end: float) -> float:
        return sum(min(end, to) - max(start, since) for since, to in self.ticks
                   if to > start and since < end)


async def failover_under_load(limiter: RateLimiter, metrics: GatewayMetrics,
                              kill: Callable[[], None], lenient: str, strict: str,
                              timeout_s: float) -> list[Outcome]:
    """Checks for models `lenient` (its rule, named "lenient", fails open) and `strict` (rule
    "strict" fails closed) run without pause while `kill` takes their master down, until
    Redis decides both again after the failover. Asserts what must hold all along; returns
    every outcome."""
    await wait_until(lambda: answered(limiter, lenient))  # connected, script loaded
    opened = decisions(metrics, "lenient", "failed_open")
    outcomes: list[Outcome] = []
    stop = asyncio.Event()
    stalls = LoopStalls()

    async def load(model: str) -> None:
        while not stop.is_set():
            request = infer_request(model)
            started = time.monotonic()
            error = await attempt(limiter, request)
            outcomes.append(Outcome(model, started, time.monotonic() - started, error,
                                    "RateLimit" in request.context.reply_headers))
            await asyncio.sleep(0.001)  # an open breaker answers at once: let the loop run

    workers = [asyncio.create_task(load(model)) for model in (lenient, strict) * 4]
    workers.append(asyncio.create_task(stalls.watch(stop)))
    try:
        await wait_until(lambda: len(outcomes) > 40)
        killed = time.monotonic()
        await asyncio.to_thread(kill)

        def decided_again(model: str) -> bool:
            return any(o.answered for o in outcomes[-8:] if o.model == model
                       and o.started > killed + 0.1)
        await wait_until(lambda: decided_again(lenient) and decided_again(strict), within=30)
    finally:
        stop.set()
        await asyncio.gather(*workers)
    during = [o for o in outcomes if not o.answered]
    assert during, "the failover went unnoticed: nothing was decided by on_redis_error"
    # No check waited past the timeout (but for the time this process was not running).
    slowest = max(outcomes, key=lambda o: o.elapsed - stalls.within(o.started,
                                                                     o.started + o.elapsed))
    assert slowest.elapsed - stalls.within(slowest.started, slowest.started + slowest.elapsed
                                           ) < timeout_s + 0.02, (slowest, stalls.ticks[-5:])
    assert all(o.error is None for o in outcomes if o.model == lenient)  # fails open
    refused = [o.error for o in during if o.model == strict]
    assert refused and all(isinstance(e, Unavailable) and e.http_status == 503
                           for e in refused)  # fails closed
    assert decisions(metrics, "lenient", "failed_open") - opened == sum(
        o.model == lenient for o in during)
    return outcomes


Replica = Callable[[], Awaitable[TestClient]]


def policy_version(client: TestClient) -> int:
    return client.gateway.policies.store.active.version.number  # type: ignore[attr-defined, no-any-return]


async def policy_follows_failover(replica: Replica, kill: Callable[[], None]) -> None:
    """Two gateways share policies; after the master of the policy keys dies, a change made on
    one still reaches the other (and one that starts then loads it)."""
    first, second = await replica(), await replica()
    assert (await first.put("/admin/policies", data=pinned_policy(2))).status == 200
    await wait_until(lambda: policy_version(second) == policy_version(first), within=5)
    assert (await predict(second)).variant == "v2"
    await asyncio.to_thread(kill)

    async def changed() -> bool:  # 503 until the failover is done
        return (await first.put("/admin/policies", data=pinned_policy(1))).status == 200
    await wait_until(changed, within=30)
    await wait_until(lambda: policy_version(second) == policy_version(first), within=10)
    assert (await predict(second)).variant == "v1"
    late = await replica()
    assert policy_version(late) == policy_version(first)
    assert (await predict(late)).variant == "v1"
