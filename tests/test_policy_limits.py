"""The policy's `[[limits]]` are the rules the Redis limiter enforces, and a reload changes
them at once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from tests.policy_support import AB_MODEL, add_ab_model, policies_section, predict, write_policy
from tests.redis_server import redis_server  # noqa: F401 (fixture)

TIGHT = """
[[limits]]
name = "tight"
models = ["ab"]
rate = 1
period_s = 3600
burst = 1
"""


async def test_policy_limits_are_enforced_and_reloads_change_them(
        redis_server: str, make_client: Callable[..., Any], repo: Path,  # noqa: F811
        tmp_path: Path) -> None:
    # Redis first, so it is torn down after the gateway has closed.
    add_ab_model(repo)
    write_policy(tmp_path / "policies" / "limits.toml", TIGHT)
    client: TestClient = await make_client(
        f'{AB_MODEL}\n[redis]\nurl = "{redis_server}"\n' + policies_section(tmp_path / "policies"))
    assert (await predict(client)).status == 200
    refused = await predict(client)
    assert refused.status == 429 and "'tight'" in str(refused.body["error"])
    assert (await predict(client, "demo")).status == 200  # the rule names only `ab`
    reply = await client.put("/admin/policies", data=TIGHT.replace('["ab"]', '["demo"]'))
    assert reply.status == 200
    assert (await predict(client)).status == 200
