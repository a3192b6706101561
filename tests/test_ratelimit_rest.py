"""The limiter behind the REST front door, limits from a policy file: `RateLimit-Policy` and
`RateLimit` on every reply, 429 with `Retry-After`, 503 when Redis is gone and the rule fails
closed. The rows of a v2 batch are its cost."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from tests.redis_server import RedisServer, redis_process  # noqa: F401 (a fixture)


def limits_config(tmp_path: Path, redis_url: str, limits: str, redis: str = "") -> str:
    """`gateway.toml` lines for Redis (plus `redis`, more `[redis]` lines) and a policy
    directory holding `limits`. The timeout is generous: a burst of requests stalls a cold
    gateway's event loop for tens of ms (measured), a check that times out fails open or
    closed, and these tests are about exact answers."""
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "limits.toml").write_text(textwrap.dedent(limits))
    return (f'[redis]\nurl = "{redis_url}"\ntimeout_ms = 2000\n{redis}\n'
            f'[policies]\ndirectory = "{policies}"\n')


def body(rows: int) -> dict[str, object]:
    return {"inputs": [{"name": "x", "shape": [rows, 4], "datatype": "FP32",
                        "data": [0.5] * 4 * rows}]}


async def test_limits_show_in_replies_and_refusals(
        make_client: Callable[..., Any], tmp_path: Path,
        redis_process: RedisServer) -> None:  # noqa: F811
    client: TestClient = await make_client(
        limits_config(tmp_path, redis_process.url, """
            [[limits]]
            name = "demo-rows"
            models = ["demo"]
            rate = 3
            period_s = 3600
            burst = 3
            cost = "rows"
            on_redis_error = "closed"
            """))
    reply = await client.post("/v2/models/demo/infer", json=body(2))
    assert reply.status == 200, await reply.text()
    assert (reply.headers["RateLimit-Policy"], reply.headers["RateLimit"]) == (
        '"demo-rows";q=3;w=3600;gateway-unit="rows"', '"demo-rows";r=1;t=2400')
    reply = await client.post("/v2/models/demo/infer", json=body(2))
    assert reply.status == 429
    assert "rate limit 'demo-rows' exceeded" in (await reply.json())["error"]
    assert (reply.headers["Retry-After"], reply.headers["RateLimit"]) == (
        "1200", '"demo-rows";r=1;t=1200')
    reply = await client.post("/v2/models/demo/infer", json=body(1))
    assert reply.status == 200 and reply.headers["RateLimit"].startswith('"demo-rows";r=0;')
    redis_process.kill()
    reply = await client.post("/v2/models/demo/infer", json=body(1))
    assert reply.status == 503 and reply.headers["Retry-After"] == "1"
    assert "fails closed" in (await reply.json())["error"]
    assert "RateLimit" not in reply.headers  # nothing is known about the bucket
