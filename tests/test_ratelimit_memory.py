"""Limits with no Redis are never off: counted in the process's memory by the Redis script's
own arithmetic (checked against the script on a real redis-server), enforced through both
doors of a gateway with no `[redis]`, with `RateLimit-Policy`/`RateLimit` on every reply and
`Retry-After` on a 429, and said out loud at start and by `gateway check-config`."""

from __future__ import annotations

import json
import random
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
import redis

from gateway.cli import main
from gateway.ratelimit.gcra import SCRIPT
from gateway.ratelimit.headers import rate_limit_headers
from gateway.ratelimit.memory import MemoryBuckets, evaluate
from gateway.ratelimit.rules import LimitRule
from tests.redis_server import redis_server  # noqa: F401 (a fixture)
from tests.servers.gateway_process import gateway_process
from tests.servers.running_gateway import StartGateway
from tests.test_grpc_frontend import infer_request

pytest_plugins = ["tests.servers.fixtures"]

HOUR_US = 3_600_000_000
PER_PROCESS = "counted in each process's memory"
BODY = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0.5] * 4}]}


def policies(tmp_path: Path, limits: str) -> str:
    """A `[policies]` table over a directory holding `limits`."""
    directory = tmp_path / "policies"
    directory.mkdir(exist_ok=True)
    (directory / "limits.toml").write_text(textwrap.dedent(limits))
    return f'\n[policies]\ndirectory = "{directory}"\n'


TWO_PER_HOUR = """
    [[limits]]
    name = "demo-hourly"
    models = ["demo"]
    rate = 1
    period_s = 3600
    burst = 2
    """


def test_memory_answers_as_the_redis_script_does(redis_server: str) -> None:  # noqa: F811
    """Random multi-bucket calls (charges, leases, give-backs, refusals) on the script in Redis
    and on `evaluate`: the same decisions, remainders and grants; times agree to the clocks'
    drift over the run (units of an hour make that drift irrelevant to the rest)."""
    client = redis.Redis.from_url(redis_server)
    rng = random.Random(13)
    tats: dict[str, int] = {}
    keys = ["a", "b", "c"]
    for _ in range(300):
        chosen = rng.sample(keys, rng.randint(1, 3))
        args: list[int] = []
        for _ in chosen:
            burst = rng.randint(1, 5)
            args += [rng.randint(0, 3), HOUR_US, HOUR_US * burst, rng.randint(0, 3),
                     rng.choice([0, 0, 0, 1, 2])]
        expected = [int(v) for v in client.eval(SCRIPT, len(chosen), *chosen, *args)]
        got = evaluate(tats, time.monotonic_ns() // 1000, chosen, args)
        for i in range(0, len(expected), 5):
            assert (got[i], got[i + 1], got[i + 4]) == (expected[i], expected[i + 1],
                                                        expected[i + 4])
            assert abs(got[i + 2] - expected[i + 2]) < 5_000_000
            assert abs(got[i + 3] - expected[i + 3]) < 5_000_000
    client.close()


async def test_memory_keeps_at_most_max_keys_and_drops_the_stalest() -> None:
    buckets = MemoryBuckets(max_keys=100)
    for i in range(250):
        await buckets.call([f"k{i}"], [1, HOUR_US, HOUR_US, 0, 0])
    assert len(buckets) == 100
    # The newest key is still charged: a second unit is refused for about an hour.
    allowed, _, _, retry_us, _ = await buckets.call(["k249"], [1, HOUR_US, HOUR_US, 0, 0])
    assert allowed == 0 and retry_us > HOUR_US - 60_000_000
    # The stalest went: k0 starts afresh.
    assert (await buckets.call(["k0"], [1, HOUR_US, HOUR_US, 0, 0]))[0] == 1


async def test_both_doors_enforce_limits_with_no_redis(start_gateway: StartGateway,
                                                       tmp_path: Path) -> None:
    gw = await start_gateway(policies(tmp_path, TWO_PER_HOUR))
    reply = await gw.http.post("/v2/models/demo/infer", json=BODY)
    assert reply.status == 200, await reply.text()
    assert reply.headers["RateLimit-Policy"] == '"demo-hourly";q=2;w=7200'
    assert reply.headers["RateLimit"] == '"demo-hourly";r=1;t=3600'
    assert "Retry-After" not in reply.headers
    # The gRPC door counts in the same bucket (the same caller: anonymous).
    call = gw.v2.ModelInfer(infer_request("demo", [[1.0, 2.0, 3.0, 4.0]]))
    await call
    trailing = dict(await call.trailing_metadata() or ())
    assert trailing["ratelimit"] == '"demo-hourly";r=0;t=7200'
    reply = await gw.http.post("/v2/models/demo/infer", json=BODY)
    assert reply.status == 429
    assert "rate limit 'demo-hourly' exceeded" in (await reply.json())["error"]
    retry = int(reply.headers["Retry-After"])
    assert 3590 <= retry <= 3600
    assert reply.headers["RateLimit"] == f'"demo-hourly";r=0;t={retry}'
    assert reply.headers["RateLimit-Policy"] == '"demo-hourly";q=2;w=7200'
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await gw.v2.ModelInfer(infer_request("demo", [[1.0, 2.0, 3.0, 4.0]]))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    trailing = dict(refused.value.trailing_metadata() or ())
    assert trailing["retry-after"] == str(retry) and trailing["ratelimit"].startswith(
        '"demo-hourly";r=0;')
    # Another model is not limited: no fields at all.
    reply = await gw.http.post("/v1/models/tfdemo:predict",
                               json={"instances": [[1.0, 2.0, 3.0, 4.0]]})
    assert reply.status == 200 and "RateLimit" not in reply.headers


def post(url: str) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(url, data=json.dumps(BODY).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, dict(reply.headers)
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers)


def test_a_served_gateway_warns_at_start_and_enforces(
        write_config: Callable[..., Path], tmp_path: Path) -> None:
    config = write_config(policies(tmp_path, TWO_PER_HOUR))
    with gateway_process(config, tmp_path / "gateway.log") as gateway:
        gateway.wait_ready()
        assert PER_PROCESS in gateway.log_text()
        assert "1 worker process(es)" in gateway.log_text()
        statuses = [post(gateway.url("/v2/models/demo/infer")) for _ in range(3)]
    assert [status for status, _ in statuses] == [200, 200, 429]
    assert statuses[2][1]["RateLimit"].startswith('"demo-hourly";r=0;')
    assert int(statuses[2][1]["Retry-After"]) > 3500


def test_check_config_says_limits_are_per_process(
        write_config: Callable[..., Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    limits = policies(tmp_path, TWO_PER_HOUR)
    assert main(["check-config", str(write_config(limits, server="workers = 3"))]) == 0
    err = capsys.readouterr().err
    assert PER_PROCESS in err and "no [redis] section" in err
    assert "3 worker process(es)" in err and "3 x replicas" in err
    # No limits in the policy: nothing to say.
    assert main(["check-config", str(write_config())]) == 0
    assert PER_PROCESS not in capsys.readouterr().err


def test_store_redis_refuses_to_start_without_redis(
        write_config: Callable[..., Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(policies(tmp_path, TWO_PER_HOUR) + '\n[limits]\nstore = "redis"\n')
    assert main(["check-config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "gateway.toml" in err and "store" in err and "needs a [redis] section" in err


def test_store_memory_is_chosen_even_with_redis(
        write_config: Callable[..., Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(policies(tmp_path, TWO_PER_HOUR)
                          + '\n[redis]\nurl = "redis://127.0.0.1:1/0"\n'
                          + '\n[limits]\nstore = "memory"\n')
    assert main(["check-config", str(config)]) == 0
    assert '[limits] store = "memory"' in capsys.readouterr().err


def test_reply_fields_are_structured_field_lists() -> None:
    """Names are sf-strings (quotes and backslashes escaped, non-ASCII replaced); `w` is the
    seconds a burst takes to refill, rounded up; every rule that applied is listed."""
    rows = LimitRule('a "b" \\ né', ("*",), rate=3, period_s=1, burst=5, cost="rows")
    assert rows.policy_item == '"a \\"b\\" \\\\ n?";q=5;w=2;gateway-unit="rows"'
    fields = rate_limit_headers((rows, LimitRule("per-user", ("*",))), rows, 3, 0.2)
    assert fields == {"RateLimit-Policy": rows.policy_item + ', "per-user";q=10;w=1',
                      "RateLimit": '"a \\"b\\" \\\\ n?";r=3;t=1'}
