"""The endpoint pool every remote backend shares (adapters/pool/): outlier ejection and its
limits on a clock the test moves, then end to end through a gateway to TF Serving stand-ins
on loopback: an endpoint killed under load, health checks bringing it back, the circuit when
every endpoint is out, the probes' jitter, and what clients and metrics are told."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import replace
from typing import Any

import grpc
import numpy as np
import pytest
from aiohttp.test_utils import TestClient
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from adapters.endpoints import GrpcEndpoint, GrpcPool
from adapters.pool.balancer import Balancer
from adapters.pool.endpoint import Endpoint
from adapters.pool.failures import Unreachable
from adapters.pool_config import PoolConfig
from gateway.errors import BackendError, BadRequest, DeadlineExceeded, Unavailable
from tests.servers.tfserving_standin import (
    StartStandIn,
    TfServingStandIn,
    stable_answer,
    tfserving_config,
)
from tests.waiting import wait_until

pytest_plugins = ["tests.servers.fixtures"]

ROWS = [[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.0, 2.0]]
MakeClient = Callable[..., Any]
NO_CHECKS = PoolConfig(health_check_interval_s=0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pool_of(n: int, config: PoolConfig = NO_CHECKS) -> tuple[Balancer[Endpoint], Clock]:
    clock = Clock()
    return Balancer("b", [Endpoint(f"e{i}") for i in range(n)], config, clock=clock), clock


async def fail_on(pool: Balancer[Endpoint], address: str,
                  error: Exception | None = None) -> str:
    """One call through `pool`, failing with `error` (Unreachable) if it lands on `address`;
    the address that answered in the end."""
    async def attempt(endpoint: Endpoint) -> str:
        if endpoint.address == address:
            raise error or Unreachable("connection refused")
        return endpoint.address
    return await pool.call(attempt)


# outlier ejection, on a clock the test moves


async def test_consecutive_failures_eject_for_a_growing_time_capped() -> None:
    pool, clock = pool_of(3, replace(NO_CHECKS, consecutive_failures=3, max_ejection_percent=50,
                                     base_ejection_time_s=10, max_ejection_time_s=25))
    e0 = pool.endpoints[0]
    for seconds in (10, 20, 25):  # base times ejections in a row, at most the cap
        while not e0.ejected:
            assert await fail_on(pool, "e0") != "e0"  # retried elsewhere: the caller never sees it
        assert e0.ejected_until == clock.now + seconds
        assert e0 not in pool.up()
        clock.now += seconds
        assert e0 in pool.up()  # the time is over: back
    assert e0.ejections == {"consecutive_failures": 3}


async def test_a_success_resets_the_count_and_a_clients_4xx_or_504_is_no_failure() -> None:
    pool, _ = pool_of(2, replace(NO_CHECKS, consecutive_failures=2, max_ejection_percent=50))
    e0 = pool.endpoints[0]
    e0.outstanding = -10  # always chosen first
    for error in (BadRequest("no such input"), DeadlineExceeded("too slow"),
                  BackendError("handler failed")):
        with pytest.raises(type(error)):
            await fail_on(pool, "e0", error)
    assert e0.consecutive_failures == 1 and not e0.ejected  # only the 502 counted
    assert await fail_on(pool, "nobody") == "e0"
    assert e0.consecutive_failures == 0


async def test_a_failure_rate_over_the_window_ejects() -> None:
    pool, clock = pool_of(2, replace(NO_CHECKS, consecutive_failures=0, failure_rate=0.5,
                                     failure_rate_min_requests=10, max_ejection_percent=50))
    e0 = pool.endpoints[0]
    e0.outstanding = -10
    for n in range(9):  # every other call fails: 50%, but not judged below 10 calls
        with pytest.raises(BackendError) if n % 2 == 0 else nullcontext():
            await fail_on(pool, "e0" if n % 2 == 0 else "nobody", BackendError("x"))
    assert not e0.ejected
    clock.now += PoolConfig().failure_rate_window_s  # a new window: the count starts over
    for n in range(10):
        with pytest.raises(BackendError) if n % 2 == 0 else nullcontext():
            await fail_on(pool, "e0" if n % 2 == 0 else "nobody", BackendError("x"))
    assert e0.ejections == {"failure_rate": 1}


@pytest.mark.parametrize(("endpoints", "percent", "most_out"),
                         [(4, 50, 2), (10, 10, 1), (2, 10, 1), (3, 100, 2), (1, 100, 0),
                          (5, 0, 0)])
async def test_max_ejection_percent_is_respected_and_one_endpoint_always_stays(
        endpoints: int, percent: int, most_out: int) -> None:
    pool, _ = pool_of(endpoints, replace(NO_CHECKS, consecutive_failures=1,
                                         max_ejection_percent=percent))

    async def all_fail(endpoint: Endpoint) -> None:
        raise Unreachable("refused")

    for _ in range(3 * endpoints):
        with pytest.raises(Unavailable) as caught:
            await pool.call(all_fail)
        # what a client reads: the backend's name, not the endpoint's text
        assert caught.value.message == "the model's backend is unavailable"
    assert sum(e.ejected for e in pool.endpoints) == most_out


async def test_ejection_never_takes_the_last_endpoint_up_when_others_fail_health_checks(
        ) -> None:
    pool, _ = pool_of(3, replace(NO_CHECKS, consecutive_failures=1, max_ejection_percent=100))
    e0, e1, e2 = pool.endpoints
    e2.healthy = False  # as failed health checks leave it (not an ejection: no share used)
    while not e0.ejected:
        assert await fail_on(pool, "e0") == "e1"
    for _ in range(5):
        with pytest.raises(Unavailable):
            await fail_on(pool, "e1")  # the last one up: it fails, but it stays
    assert not e1.ejected and pool.up() == [e1]


async def test_every_endpoint_out_is_refused_at_once_with_retry_after() -> None:
    pool, clock = pool_of(2, replace(NO_CHECKS, health_check_interval_s=5, healthy_threshold=2,
                                     consecutive_failures=1, max_ejection_percent=50,
                                     base_ejection_time_s=7.5))
    while not pool.endpoints[0].ejected:
        await fail_on(pool, "e0")
    # no probe is given, so no checks run: the test sets what they found
    pool.endpoints[1].healthy = False  # 2 passed checks away: 10 s
    calls = 0

    async def count(endpoint: Endpoint) -> None:
        nonlocal calls
        calls += 1

    with pytest.raises(Unavailable) as caught:
        await pool.call(count)
    assert calls == 0 and pool.refused == 1
    assert caught.value.message == "the model's backend is unavailable: every endpoint is out"
    assert caught.value.reply_headers()["Retry-After"] == "8"  # when e0's ejection ends
    clock.now += 7.5
    assert await pool.call(lambda endpoint: asyncio.sleep(0, endpoint.address)) == "e0"


# end to end: a gateway in front of TF Serving stand-ins


async def predict(client: TestClient) -> int:
    reply = await client.post("/v1/models/tfdemo/versions/1:predict", json={"instances": ROWS})
    if reply.status == 200:
        np.testing.assert_allclose((await reply.json())["predictions"], stable_answer(ROWS),
                                   rtol=1e-5)
    return reply.status


def pool(client: TestClient) -> GrpcPool:
    return client.gateway.adapters["pool"].pool  # type: ignore[attr-defined, no-any-return]


def served(standin: TfServingStandIn) -> int:
    return len(standin.calls("Predict"))


async def test_an_endpoint_killed_under_load_is_ejected_and_comes_back_after_health_checks(
        make_client: MakeClient, start_standin: StartStandIn) -> None:
    standins = [await start_standin() for _ in range(3)]
    client = await make_client(tfserving_config(
        *(s.address for s in standins), models=("tfdemo",), adapter="pool",
        consecutive_failures=3, max_ejection_percent=50, base_ejection_time_s=60,
        health_check_interval_s=0.1, unhealthy_threshold=2, healthy_threshold=2))
    statuses: list[int] = []
    stop = asyncio.Event()

    async def user() -> None:
        while not stop.is_set():
            statuses.append(await predict(client))

    users = [asyncio.create_task(user()) for _ in range(8)]
    try:
        await wait_until(lambda: all(served(s) >= 20 for s in standins), within=30)
        victim, endpoint = standins[0], pool(client).endpoints[0]
        in_flight = endpoint.outstanding
        before = len(statuses)
        await victim.stop()
        await wait_until(lambda: not endpoint.up, within=10)  # ejected or failing its checks
        after_out = len(statuses)
        await wait_until(lambda: len(statuses) >= after_out + 200, within=30)
        # only calls in flight on the victim when it died may have failed
        assert sum(s != 200 for s in statuses[before:]) <= in_flight
        assert all(s == 200 for s in statuses[after_out:])
        await victim.start()  # the same port
        came_back = served(victim)
        await wait_until(lambda: endpoint.up, within=20)
        await wait_until(lambda: served(victim) >= came_back + 20, within=20)  # traffic again
        assert all(s == 200 for s in statuses[after_out:])
    finally:
        stop.set()
        await asyncio.gather(*users)
    metrics = await (await client.get("/metrics")).text()
    labels = f'backend="pool",endpoint="{victim.address}"'
    assert f"gateway_backend_endpoint_up{{{labels}}} 1.0" in metrics
    assert f"gateway_backend_health_check_failures_total{{{labels}}}" in metrics
    assert _value(metrics, f"gateway_backend_health_check_failures_total{{{labels}}}") >= 1 or \
        _value(metrics, f'gateway_backend_endpoint_ejections_total{{{labels},'
                        'reason="consecutive_failures"}') >= 1


async def test_consecutive_failures_eject_an_endpoint_without_health_checks(
        make_client: MakeClient, start_standin: StartStandIn) -> None:
    standins = [await start_standin() for _ in range(2)]
    client = await make_client(tfserving_config(
        *(s.address for s in standins), models=("tfdemo",), adapter="pool",
        consecutive_failures=2, health_check_interval_s=0))
    await standins[1].stop()
    endpoint = pool(client).endpoints[1]
    while not endpoint.ejected:
        assert await predict(client) == 200  # retried on the other: no client sees it
    calls = served(standins[0])
    for _ in range(10):
        assert await predict(client) == 200
    assert served(standins[0]) == calls + 10  # every one, none tried on the ejected one first
    metrics = await (await client.get("/metrics")).text()
    labels = f'backend="pool",endpoint="{standins[1].address}"'
    assert f"gateway_backend_endpoint_ejected{{{labels}}} 1.0" in metrics
    assert _value(metrics, f'gateway_backend_endpoint_ejections_total{{{labels},'
                           'reason="consecutive_failures"}') == 1


async def test_every_endpoint_out_answers_503_at_once_without_waiting_on_timeouts(
        make_client: MakeClient, hung_address: str, start_standin: StartStandIn) -> None:
    standin = await start_standin()
    client = await make_client(tfserving_config(
        hung_address, standin.address, models=("tfdemo",), adapter="pool", connect_timeout_s=5,
        health_check_interval_s=0.05, health_check_timeout_s=0.2, unhealthy_threshold=1))
    await standin.stop()
    await wait_until(lambda: not any(e.up for e in pool(client).endpoints), within=10)
    started = time.monotonic()
    reply = await client.post("/v1/models/tfdemo:predict", json={"instances": ROWS})
    assert time.monotonic() - started < 2  # not the hung host's deadline nor a 5 s connect
    assert reply.status == 503 and int(reply.headers["Retry-After"]) >= 1
    assert (await reply.json())["error"] == (
        "the model's backend is unavailable: every endpoint is out")
    metrics = await (await client.get("/metrics")).text()
    assert _value(metrics, 'gateway_backend_circuit_open_responses_total{backend="pool"}') >= 1
    # the replica stays ready (it serves demo); the model's own readiness says no
    assert (await client.get("/readyz")).status == 200
    assert (await client.get("/v2/models/tfdemo/ready")).status == 503


async def test_health_checks_run_on_a_jittered_interval_with_the_kinds_status_call(
        make_client: MakeClient, start_standin: StartStandIn) -> None:
    standin = await start_standin()
    await make_client(tfserving_config(standin.address, models=("tfdemo",), adapter="pool",
                                       health_check_interval_s=0.4))
    await wait_until(lambda: len(standin.calls("GetModelStatus")) >= 11, within=20)
    probes = standin.calls("GetModelStatus")
    assert {p.request.model_spec.name for p in probes} == {"tfdemo"}  # a configured model
    assert all(p.time_remaining is not None and p.time_remaining <= 1.05 for p in probes)
    gaps = [b.at - a.at for a, b in itertools.pairwise(probes)][:10]
    assert min(gaps) >= 0.4 * 0.9 - 0.01  # never sooner than the interval less 10%
    assert statistics.median(gaps) <= 0.4 * 1.1 + 0.05  # and about the interval
    assert max(gaps) - min(gaps) >= 0.02  # ±10% at random: not in step


async def test_a_backend_with_grpc_health_is_asked_that_and_not_serving_takes_it_out() -> None:
    server = grpc.aio.server()
    health_service = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    kind_probes = 0

    async def kind_probe(endpoint: GrpcEndpoint, seconds: float) -> None:
        nonlocal kind_probes
        kind_probes += 1

    config = PoolConfig(health_check_interval_s=0.05, unhealthy_threshold=2,
                        healthy_threshold=2)
    grpc_pool = GrpcPool("h", [f"127.0.0.1:{port}"], config, lambda exc, where: Unavailable(where),
                         probe=kind_probe)
    endpoint = grpc_pool.endpoints[0]
    try:
        await health_service.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        await wait_until(lambda: not endpoint.up)
        await health_service.set("", health_pb2.HealthCheckResponse.SERVING)
        await wait_until(lambda: endpoint.up)
        assert endpoint.health_service and kind_probes == 0  # the kind's probe was not needed
        assert endpoint.health_check_failures >= 2
    finally:
        await grpc_pool.close()
        await server.stop(None)


def _value(metrics: str, series: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{series} not in the metrics")
