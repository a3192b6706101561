"""Policies apply without a restart: on file change, on SIGHUP (a real `gateway serve`
process), through the admin API; a broken edit leaves the running policy; and not one request
fails while the policy changes under load."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from tests.policy_support import (
    AB_MODEL,
    add_ab_model,
    policies_section,
    predict,
    v2_body,
    write_policy,
)
from tests.waiting import wait_until

MakeClient = Callable[..., Any]
ROOT = Path(__file__).resolve().parent.parent
PINNED = """
[[routes]]
name = "pinned"
model = "ab"
target = {{ adapter = "local", {pin}, variant = "{variant}" }}
"""
STABLE = PINNED.format(pin="version = 1", variant="stable")
CANARY = PINNED.format(pin='label = "canary"', variant="canary")
VERSION_OF = {"stable": "1", "canary": "2"}


def changes(client: TestClient, origin: str, result: str) -> float:
    registry = client.gateway.metrics.registry  # type: ignore[attr-defined]
    return registry.get_sample_value("gateway_policy_changes_total",  # type: ignore[no-any-return]
                                     {"origin": origin, "result": result}) or 0.0


def active_version(client: TestClient) -> int:
    return client.gateway.policies.store.active.version.number  # type: ignore[attr-defined, no-any-return]


@pytest.fixture
async def watched(make_client: MakeClient, tmp_path: Path, repo: Path) -> TestClient:
    add_ab_model(repo)
    write_policy(tmp_path / "policies" / "ab.toml", STABLE)
    return await make_client(AB_MODEL + policies_section(tmp_path / "policies"))  # type: ignore[no-any-return]


async def variant_is(client: TestClient, variant: str) -> bool:
    return (await predict(client)).variant == variant


async def test_a_file_change_applies_and_a_broken_edit_is_refused(
        watched: TestClient, tmp_path: Path) -> None:
    policy = tmp_path / "policies" / "ab.toml"
    assert (await predict(watched)).variant == "stable"
    write_policy(policy, CANARY)
    await wait_until(lambda: variant_is(watched, "canary"))
    assert active_version(watched) == 2
    write_policy(policy, CANARY.replace("variant =", "varient ="))
    await wait_until(lambda: changes(watched, "files", "refused") == 1)
    assert active_version(watched) == 2 and (await predict(watched)).variant == "canary"
    write_policy(tmp_path / "policies" / "more.toml", '[[limits]]\nname = "l"\nmodels = ["*"]\n')
    write_policy(policy, STABLE)  # fixed: both files apply together
    await wait_until(lambda: active_version(watched) == 3)
    limits = watched.gateway.policies.store.active.policy.limits  # type: ignore[attr-defined]
    assert [rule.name for rule in limits] == ["l"]
    assert (await predict(watched)).variant == "stable"
    policy.unlink()
    await wait_until(lambda: active_version(watched) == 4)
    assert (await predict(watched)).variant is None  # no route left: the route table


async def test_no_request_fails_while_the_policy_changes_under_load(
        watched: TestClient, tmp_path: Path) -> None:
    """24 changes (admin API and file edits in turn) under 8 concurrent clients: every
    request succeeds, and each one is served wholly by one policy (variant and version
    agree)."""
    done = asyncio.Event()
    served: Counter[tuple[int, str | None, str | None]] = Counter()

    async def hammer() -> None:
        while not done.is_set():
            reply = await predict(watched)
            served[reply.status, reply.variant, reply.version] += 1

    async def changed(before: int, requests: int) -> None:
        """The new version runs, and requests have been served since the change."""
        await wait_until(lambda: active_version(watched) > before)
        await wait_until(lambda: sum(served.values()) >= requests + 8)

    clients = [asyncio.ensure_future(hammer()) for _ in range(8)]
    start = active_version(watched)
    for change in range(24):
        text = CANARY if change % 2 == 0 else STABLE
        before, requests = active_version(watched), sum(served.values())
        if change % 4 < 2:
            reply = await watched.put("/admin/policies", data=text)
            assert reply.status == 200
        else:
            write_policy(tmp_path / "policies" / "ab.toml", text + f"# edit {change}\n")
        await changed(before, requests)
    done.set()
    await asyncio.gather(*clients)
    assert active_version(watched) - start == 24
    failures = {key: n for key, n in served.items() if key[0] != 200}
    assert failures == {}
    assert {(variant, version) for _, variant, version in served} == {
        ("stable", "1"), ("canary", "2")}
    assert sum(served.values()) >= 100


@pytest.fixture
async def process(tmp_path: Path, repo: Path) -> AsyncIterator[tuple[asyncio.subprocess.Process,
                                                                     int]]:
    """`gateway serve` on free ports with a watched policy directory polled only hourly."""
    add_ab_model(repo)
    write_policy(tmp_path / "policies" / "ab.toml", STABLE)
    config = tmp_path / "gateway.toml"
    config.write_text(f"""
[server]
http_port = 0
grpc_port = 0
access_log = false

[adapters.local]
kind = "onnx"
repository = "{repo}"
{AB_MODEL}
{policies_section(tmp_path / "policies", poll_interval_s=3600)}
""")
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--config", str(config), cwd=ROOT,
        stderr=asyncio.subprocess.PIPE)
    assert child.stderr is not None
    log: list[str] = []
    port = None
    while port is None:  # wait on the log line, not on a timer
        line = (await asyncio.wait_for(child.stderr.readline(), 30)).decode()
        assert line, "gateway exited: " + "".join(log)
        log.append(line)
        if listening := re.search(r"listening on http://[\d.]+:(\d+)", line):
            port = int(listening[1])
    drain = asyncio.ensure_future(child.stderr.read())  # keep the pipe from filling up
    async with aiohttp.ClientSession() as session:  # the doors open before the models load

        async def ready() -> bool:
            async with session.get(f"http://127.0.0.1:{port}/readyz") as reply:
                return reply.status == 200

        await wait_until(ready, within=30)
    yield child, port
    child.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(child.wait(), 30) == 0
    await drain


async def test_sighup_reloads_the_files(process: tuple[asyncio.subprocess.Process, int],
                                        tmp_path: Path) -> None:
    child, port = process
    url = f"http://127.0.0.1:{port}/v2/models/ab/infer"
    async with aiohttp.ClientSession() as session:

        async def variant() -> str | None:
            async with session.post(url, json=v2_body()) as reply:
                assert reply.status == 200
                return reply.headers.get("x-gateway-variant")

        assert await variant() == "stable"
        async def canary() -> bool:
            return await variant() == "canary"

        write_policy(tmp_path / "policies" / "ab.toml", CANARY)
        child.send_signal(signal.SIGHUP)
        await wait_until(canary)
        async with session.get(f"http://127.0.0.1:{port}/admin/policies") as reply:
            assert (await reply.json())["active"]["version"] == 2

