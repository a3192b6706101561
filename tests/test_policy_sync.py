"""Replicas sharing policies through a real redis-server: a change on one is running on every
replica within a second, a replica that starts later loads it, replicas watching the same
files agree on one version instead of flapping, and history (so rollback) is shared."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
from aiohttp.test_utils import TestClient

from gateway.app import CLOSE_STEP_S
from gateway.policy.loader import content_hash
from gateway.policy.store import PolicyVersion
from gateway.policy.sync import RedisPolicySync
from gateway.ratelimit.config import RedisConfig
from tests.policy_support import (
    AB_MODEL,
    add_ab_model,
    pinned_policy,
    policies_section,
    predict,
    write_policy,
)
from tests.redis_server import RedisServer, redis_process, redis_server  # noqa: F401 (fixtures)
from tests.waiting import wait_until

MakeClient = Callable[..., Any]


def version_of(client: TestClient) -> int:
    return client.gateway.policies.store.active.version.number  # type: ignore[attr-defined, no-any-return]


@pytest.fixture
def replica(redis_server: str, make_client: MakeClient,  # noqa: F811
            repo: Path) -> Callable[..., Any]:
    """Starts one more gateway sharing the test's Redis (and, if given, a policy directory).
    Redis comes first, so it is torn down last: the replicas close while it still runs."""
    add_ab_model(repo)

    async def start(directory: Path | None = None) -> TestClient:
        policies = policies_section(directory) if directory else ""
        return await make_client(f'{AB_MODEL}\n[redis]\nurl = "{redis_server}"\n{policies}')  # type: ignore[no-any-return]

    return start


async def test_a_change_reaches_every_replica_within_a_second_and_late_ones_load_it(
        replica: Callable[..., Any]) -> None:
    first, second = await replica(), await replica()
    reply = await first.put("/admin/policies", data=pinned_policy(2))
    assert reply.status == 200
    version = (await reply.json())["active"]["version"]
    await wait_until(lambda: version_of(second) == version, within=1.0)
    assert (await predict(second)).variant == "v2"
    late = await replica()
    assert version_of(late) == version and (await predict(late)).variant == "v2"
    shown = await (await late.get("/admin/policies")).json()
    assert shown["active"]["sources"] == {"admin.toml": pinned_policy(2)}


async def test_rollback_on_another_replica_uses_the_shared_history(
        replica: Callable[..., Any]) -> None:
    first = await replica()
    for version in (1, 2):
        assert (await first.put("/admin/policies", data=pinned_policy(version))
                ).status == 200
    late = await replica()
    reply = await late.post("/admin/policies/rollback")
    assert reply.status == 200
    restored = (await reply.json())["active"]["version"]
    assert (await predict(late)).variant == "v1"
    await wait_until(lambda: version_of(first) == restored, within=1.0)
    assert (await predict(first)).variant == "v1"


async def test_replicas_watching_the_same_files_agree_on_one_version(
        replica: Callable[..., Any], tmp_path: Path, redis_server: str) -> None:  # noqa: F811
    directory = tmp_path / "policies"
    write_policy(directory / "ab.toml", pinned_policy(1))
    first = await replica(directory)
    second = await replica(directory)  # adopts what the first shared: the same files
    assert version_of(first) == version_of(second) == 1
    write_policy(directory / "ab.toml", pinned_policy(2))
    await wait_until(lambda: version_of(first) == version_of(second) == 2)
    for client in (first, second):
        assert (await predict(client)).variant == "v2"
    async with redis.asyncio.Redis.from_url(redis_server) as shared:
        assert int(await shared.get("{gateway:policy}:counter")) == 2  # one number per edit
        assert sorted(map(int, await shared.hkeys("{gateway:policy}:versions"))) == [1, 2]


async def test_a_replica_started_without_redis_shares_its_files_once_redis_is_back(
        make_client: MakeClient, repo: Path, tmp_path: Path,
        redis_process: RedisServer) -> None:  # noqa: F811
    add_ab_model(repo)
    write_policy(tmp_path / "policies" / "ab.toml", pinned_policy(2))
    redis_process.kill()
    client: TestClient = await make_client(
        f'{AB_MODEL}\n[redis]\nurl = "{redis_process.url}"\n'
        + policies_section(tmp_path / "policies"))
    assert version_of(client) == 0 and (await predict(client)).variant == "v2"
    reply = await client.put("/admin/policies", data=pinned_policy(1))
    assert reply.status == 503 and "Redis" in (await reply.json())["error"]
    assert (await predict(client)).variant == "v2"
    redis_process.start()
    await wait_until(lambda: version_of(client) == 1)
    assert (await predict(client)).variant == "v2"


def draft(text: str, origin: str = "files") -> PolicyVersion:
    sources = (("p.toml", text),)
    return PolicyVersion(0, content_hash(sources), origin, sources, None, 1.5)


async def test_publishing_numbers_once_per_content_and_never_below_the_floor(
        redis_server: str) -> None:  # noqa: F811
    one, other = (RedisPolicySync(RedisConfig(redis_server), "test", keep=2)
                  for _ in range(2))
    try:
        first = await one.publish(draft("# a"), floor=0)
        assert (first.number, first.origin) == (1, "files")
        # the same content from another replica is the version already active
        assert await other.publish(draft("# a", origin="admin"), floor=0) == first
        assert (await other.publish(draft("# b"), floor=0)).number == 2
        # a Redis that lost its counter must not reuse numbers replicas already run
        assert (await other.publish(draft("# c"), floor=10)).number == 11
        assert [(v.number, v.sources) for v in await one.versions()] == [
            (2, (("p.toml", "# b"),)), (11, (("p.toml", "# c"),))]  # the last `keep`
    finally:
        await one.close()
        await other.close()


async def test_a_replica_closes_promptly_when_redis_is_gone(
        redis_process: RedisServer, make_client: MakeClient, repo: Path) -> None:  # noqa: F811
    add_ab_model(repo)
    client = await make_client(f'{AB_MODEL}\n[redis]\nurl = "{redis_process.url}"\n')
    redis_process.kill()  # the policy listener is now reconnecting in a loop
    started = time.monotonic()
    await client.close()
    # Every close step ended by itself: none needed the shutdown's per-step bound.
    assert time.monotonic() - started < CLOSE_STEP_S
