"""examples/secure behaves as its README says: JWT required, scopes, per-user limit, sticky A/B;
and its run.sh stops the Redis it started when the gateway stops."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import Gateway
from gateway.auth.mint import mint_token
from gateway.config import load_config
from tests.redis_server import (
    answers_ping,
    free_port,
    redis_server,  # noqa: F401 (a fixture)
)
from tests.waiting import models_loaded

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "secure" / "gateway.toml"
RUN_SH = EXAMPLE.with_name("run.sh")
ROW = {"instances": [[1, 2, 3, 4]]}


@pytest.fixture
async def secure(redis_server: str, aiohttp_client: Callable[..., object],  # noqa: F811
                 monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[TestClient, bytes]]:
    """Redis comes first, so it is torn down after the gateway has closed."""
    secret = secrets.token_urlsafe(48).encode()
    monkeypatch.setenv("GATEWAY_JWT_SECRET", secret.decode())
    monkeypatch.setenv("GATEWAY_REDIS_URL", redis_server)
    gateway = Gateway(load_config(EXAMPLE))
    client = await aiohttp_client(gateway.http_app())  # type: ignore[operator]
    await models_loaded(gateway)
    yield client, secret  # type: ignore[misc]


def bearer(secret: bytes, sub: str, scope: str) -> dict[str, str]:
    token = mint_token(secret, subject=sub, scope=scope, ttl_s=600, issuer="demo-issuer",
                       audience="gateway", algorithm="HS256", now=time.time())
    return {"Authorization": f"Bearer {token}"}


async def test_token_required_and_scopes(secure: tuple[TestClient, bytes]) -> None:
    client, secret = secure
    assert (await client.post("/v1/models/demo:predict", json=ROW)).status == 401
    user = bearer(secret, "alice", "predict")
    assert (await client.post("/v1/models/demo:predict", json=ROW, headers=user)).status == 200
    assert (await client.get("/admin/policies", headers=user)).status == 403
    assert (await client.post("/models?name=x", data=b"x", headers=user)).status == 403
    admin = bearer(secret, "ops", "predict admin")
    assert (await client.get("/admin/policies", headers=admin)).status == 200


async def test_split_is_sticky_and_overridable(secure: tuple[TestClient, bytes]) -> None:
    client, secret = secure
    seen: dict[str, set[str]] = {}
    for n in range(12):
        headers = {**bearer(secret, f"user{n}", "predict"), "x-user-id": f"u{n % 4}"}
        reply = await client.post("/v1/models/demo:predict", json=ROW, headers=headers)
        assert reply.status == 200
        seen.setdefault(f"u{n % 4}", set()).add(reply.headers["x-gateway-variant"])
    assert all(len(arms) == 1 for arms in seen.values())  # the same user stays in one arm
    forced = {**bearer(secret, "carol", "predict"), "x-experiment": "b", "x-user-id": "u0"}
    reply = await client.post("/v1/models/demo:predict", json=ROW, headers=forced)
    assert reply.headers["x-gateway-variant"] == "b"


async def test_twenty_per_second_per_user(secure: tuple[TestClient, bytes]) -> None:
    client, secret = secure
    user = bearer(secret, "dave", "predict")
    statuses = [(await client.post("/v1/models/demo:predict", json=ROW, headers=user)).status
                for _ in range(25)]
    assert statuses[:20] == [200] * 20  # the burst of 20 (refill in this time is < 1)
    assert 429 in statuses[20:]
    other = bearer(secret, "erin", "predict")  # limits are per `sub`
    assert (await client.post("/v1/models/demo:predict", json=ROW, headers=other)).status == 200


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as reply:
            return bool(reply.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def children(pid: int) -> dict[int, bytes]:
    """A process's children and their command lines (Linux /proc)."""
    with open(f"/proc/{pid}/task/{pid}/children") as listing:
        pids = [int(child) for child in listing.read().split()]
    found = {}
    for child in pids:
        try:
            with open(f"/proc/{child}/cmdline", "rb") as cmdline:
                found[child] = cmdline.read()
        except FileNotFoundError:
            continue
    return found


@pytest.mark.parametrize("stop", ["sigterm to the script", "the gateway ends on its own",
                                  "ctrl-c"])
def test_run_sh_stops_its_redis_when_the_gateway_stops(stop: str, tmp_path: Path) -> None:
    """run.sh used to `exec` the gateway, so its EXIT trap never ran and its Redis lived on."""
    redis_port, http_port, grpc_port = free_port(), free_port(), free_port()
    env = {key: value for key, value in os.environ.items() if key != "GATEWAY_REDIS_URL"}
    env.update(REDIS_PORT=str(redis_port), GATEWAY_JWT_SECRET=secrets.token_urlsafe(48))
    log = tmp_path / "run.log"
    with log.open("wb") as output:
        script = subprocess.Popen(  # a session of its own, as a terminal would start it
            [str(RUN_SH), "--http-port", str(http_port), "--grpc-port", str(grpc_port)],
            env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not ready(http_port):
            assert script.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the gateway did not become ready"
            time.sleep(0.1)
        assert answers_ping(redis_port)
        if stop == "sigterm to the script":  # as a process manager stops what it started
            os.kill(script.pid, signal.SIGTERM)
        elif stop == "ctrl-c":  # the terminal signals its whole foreground process group
            os.killpg(script.pid, signal.SIGINT)
        else:
            [gateway] = [pid for pid, cmdline in children(script.pid).items()
                         if b"serve" in cmdline.split(b"\0")]
            os.kill(gateway, signal.SIGTERM)
        assert script.wait(timeout=30) == 0  # the gateway's status: a clean drain
        assert not answers_ping(redis_port), "run.sh left its redis-server running"
    finally:  # whatever is left of the script's process group (Redis included)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(script.pid, signal.SIGKILL)
        script.wait()
