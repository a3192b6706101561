"""Zero-drop drain (gateway.shutdown) as Kubernetes sees it: `gateway serve` processes sent
SIGTERM under load, by clients that count every request they wrote and every reply they read.
Every wait is on something that must happen (a log line, a reply, a refusal), never a timer."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.inference import grpc_service_pb2 as pb
from protos.inference import grpc_service_pb2_grpc
from tests.drain_support import (
    PREDICT,
    ROOT,
    CountingClient,
    ServeProcess,
    encode_request,
    read_response,
    request_once,
)
from tests.onnx_models import demo_bytes
from tests.servers.tfserving_standin import StartStandIn, tfserving_config
from tests.waiting import wait_until

pytest_plugins = ["tests.servers.fixtures"]

CONNECTIONS = 16  # keep-alive connections of the load (2 cores: the client shares them)
Serve = Callable[[str], Awaitable[ServeProcess]]


def demo_config(server: str = "", extra: str = "") -> str:
    """The demo model served in-process; `server`: more `[server]` keys."""
    return f"""
[server]
host = "127.0.0.1"
access_log = false
{server}

[adapters.local]
kind = "onnx"
repository = "{ROOT / 'models'}"
poll_interval_s = 3600.0

[models.demo]
adapter = "local"

{extra}
"""


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Serve]:
    """Starts `gateway serve` with a config and waits until /readyz is 200; kills what is left
    after the test."""
    started: list[ServeProcess] = []

    async def start(config: str) -> ServeProcess:
        path = tmp_path / f"gateway-{len(started)}.toml"
        path.write_text(config)
        gateway = await ServeProcess.start(path)
        started.append(gateway)

        async def ready() -> bool:
            return await gateway.ready() == 200

        await wait_until(ready, within=60)  # the doors open before the models have loaded
        return gateway

    yield start
    for gateway in started:
        await gateway.stop()


async def test_sigterm_under_load_answers_every_request_sent_then_refuses_connections(
        serve: Serve) -> None:
    gateway = await serve(demo_config())
    client = CountingClient(gateway.http_port, CONNECTIONS)
    await wait_until(lambda: client.tally.answered >= 20 * CONNECTIONS)

    gateway.signal()
    tally = await asyncio.wait_for(client.finished(), 30)

    assert tally.errors == []
    assert tally.dropped == 0, f"{tally.dropped} requests written were never answered"
    assert tally.answered == tally.sent and set(tally.replies) == {200}
    # Each connection was told to close after a reply, and connecting again was refused.
    assert tally.told_to_close >= 1
    assert len(tally.refused) == CONNECTIONS
    assert await gateway.exit_code() == 0
    for phase in ("shutting down (SIGTERM)", "draining: stopped accepting", "drained in",
                  "stopped"):
        assert gateway.logged(phase), phase


async def test_during_the_drain_delay_readiness_is_red_and_no_connection_is_refused(
        serve: Serve) -> None:
    gateway = await serve(demo_config("drain_delay_s = 1"))
    # a new connection for every request: any refusal shows
    client = CountingClient(gateway.http_port, 4, headers={"Connection": "close"})
    await wait_until(lambda: client.tally.answered >= 20)

    signalled = time.monotonic()
    gateway.signal()

    async def red() -> bool:
        return await gateway.ready() == 503

    await wait_until(red)
    assert await gateway.ready("/v2/health/ready") == 503
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
        ready = await grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).ServerReady(
            pb.ServerReadyRequest(), timeout=10)
        assert not ready.ready

    tally = await asyncio.wait_for(client.finished(), 30)
    assert min(tally.refused) - signalled >= 1.0, "a connection was refused during the delay"
    assert sum(opened > signalled for opened in tally.connected) >= 10
    assert tally.errors == [] and tally.dropped == 0
    assert tally.answered == tally.sent and set(tally.replies) == {200}
    assert await gateway.exit_code() == 0


async def test_in_flight_requests_finish_within_the_timeout_and_the_rest_get_503(
        serve: Serve, start_standin: StartStandIn) -> None:
    """Two TF Serving stand-ins hold the requests sent to them: one is released during the
    drain (its requests finish), the other never is (its requests are cut at the timeout)."""
    finishing = await start_standin(models={"finishes": {1: demo_bytes()}})
    stuck = await start_standin(models={"stuck": {1: demo_bytes()}})
    finishing.pause()
    stuck.pause()
    gateway = await serve(demo_config(
        "shutdown_timeout_s = 2",
        tfserving_config(finishing.address, models=("finishes",), adapter="a") + "\n"
        + tfserving_config(stuck.address, models=("stuck",), adapter="b")))
    models = ("finishes", "stuck")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        rest = {model: asyncio.create_task(_keep_alive_predict(gateway.http_port, model))
                for model in models}
        calls = {model: asyncio.create_task(_grpc_infer(stub, model)) for model in models}
        await wait_until(lambda: finishing.waiting == 2 and stuck.waiting == 2)

        signalled = time.monotonic()
        gateway.signal()
        await wait_until(lambda: gateway.logged("draining: stopped accepting"))
        finishing.resume()

        status, headers, _ = await rest["finishes"]
        assert status == 200 and headers["connection"] == "close"
        assert (await calls["finishes"]).model_name == "finishes"

        status, headers, body = await rest["stuck"]
        assert time.monotonic() - signalled >= 2
        assert status == 503 and headers["connection"] == "close"
        assert "shutdown_timeout_s" in json.loads(body)["error"]
        with pytest.raises(grpc.aio.AioRpcError) as cut:
            await calls["stuck"]
        assert cut.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "shutdown_timeout_s" in (cut.value.details() or "")
    assert await gateway.exit_code() == 0
    assert gateway.logged("shutdown_timeout_s (2 s) passed: 2 requests still in flight "
                          "answer 503")


async def test_the_drain_waits_for_mirrored_calls(serve: Serve, start_standin: StartStandIn,
                                                  tmp_path: Path) -> None:
    shadow = await start_standin(models={"shadow": {1: demo_bytes()}})
    shadow.pause()
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "mirror.toml").write_text("""
[[routes]]
name = "shadowed"
model = "demo"
target = { adapter = "local" }

[routes.mirror]
adapter = "shadow"
model = "shadow"
percent = 100
timeout_ms = 60000
""")
    gateway = await serve(demo_config(extra=tfserving_config(
        shadow.address, models=(), adapter="shadow") + f"""
[policies]
directory = "{policies}"
"""))
    status, _, _ = await request_once(gateway.http_port, "POST", "/v1/models/demo:predict",
                                      PREDICT)
    assert status == 200
    await wait_until(lambda: shadow.waiting == 1)  # the mirrored copy, held

    gateway.signal()
    await wait_until(lambda: gateway.logged("waiting for 1 mirrored calls"))
    shadow.resume()
    assert await gateway.exit_code() == 0
    assert gateway.logged("drained in")


async def _keep_alive_predict(port: int, model: str) -> tuple[int, dict[str, str], bytes]:
    """One request on a keep-alive connection (the client does not ask to close it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(encode_request("POST", f"/v1/models/{model}:predict", PREDICT))
        return await read_response(reader)
    finally:
        writer.close()


async def _grpc_infer(stub: grpc_service_pb2_grpc.GRPCInferenceServiceStub, model: str
                      ) -> pb.ModelInferResponse:
    request = pb.ModelInferRequest(model_name=model)
    x = request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    x.contents.fp32_contents.extend([1.0, 2.0, 3.0, 4.0])
    reply: pb.ModelInferResponse = await stub.ModelInfer(request, timeout=30)
    return reply
