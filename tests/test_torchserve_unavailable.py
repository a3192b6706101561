"""When TorchServe cannot take a request: it goes away under a running gateway (clear 503s for
its models while the in-process `demo` keeps serving), its queue is full (503), or one of a
backend's endpoints is gone (requests fail over to the one that is up)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import grpc
import numpy as np
import pytest

from protos.tensorflow_serving.apis import model_pb2, predict_pb2
from tests.servers.running_gateway import StartGateway
from tests.servers.tfserving_standin import stable_answer
from tests.servers.torchserve_server import TorchServe, free_port, tiny_answer, torchserve_config
from tests.waiting import wait_until

pytest_plugins = ["tests.servers.fixtures", "tests.servers.torchserve"]

ROWS = [[1.0, 2.0, 3.0, 4.0]]


async def test_torchserve_stopped_mid_test_is_a_clear_503_and_demo_keeps_serving(
        start_gateway: StartGateway, private_torchserve: TorchServe) -> None:
    gw = await start_gateway(torchserve_config(private_torchserve))
    assert (await gw.http.post("/predictions/tiny", json=ROWS)).status == 200

    await asyncio.to_thread(private_torchserve.stop)

    response = await gw.http.post("/predictions/tiny", json=ROWS)
    assert response.status == 503
    assert response.headers["Retry-After"] == "1"
    reply = await response.json()
    assert reply["type"] == "ServiceUnavailableException"
    assert reply["message"] == "the model's backend is unavailable"  # the rest: in the log
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.predict.Predict(predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name="tiny")), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    # the gateway still serves demo: a backend down is not the replica unhealthy
    assert (await gw.http.get("/ping")).status == 200

    demo = await gw.http.post("/predictions/demo", json=ROWS)
    assert demo.status == 200
    np.testing.assert_allclose((await demo.json())["probabilities"], stable_answer(ROWS),
                               rtol=1e-6)
    v2 = await gw.http.post("/v2/models/demo/infer", json={"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": ROWS[0]}]})
    assert v2.status == 200


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
async def test_a_dead_endpoint_fails_over_to_the_live_one(
        start_gateway: StartGateway, torchserve: TorchServe, protocol: str) -> None:
    gw = await start_gateway(torchserve_config(
        torchserve, protocol=protocol, dead=f"127.0.0.1:{free_port()}"))
    for _ in range(3):  # ties between idle endpoints go round: some try the dead one first
        response = await gw.http.post("/predictions/tiny", json=ROWS)
        assert response.status == 200, await response.text()
        reply = json.loads(await response.read())  # a handler's reply: no content type
        np.testing.assert_allclose(reply["probabilities"], tiny_answer(ROWS),
                                   rtol=1e-6)
    status = await gw.http.get("/v1/models/tiny")
    assert status.status == 200, await status.text()


async def test_a_full_queue_is_503_and_the_queued_request_still_answers(
        start_gateway: StartGateway, private_torchserve: TorchServe, tmp_path: Path) -> None:
    gw = await start_gateway(torchserve_config(private_torchserve, models=("streaming",)))
    gate = tmp_path / "gate"
    busy = await gw.http.post("/predictions/streaming", json={"parts": 2, "gate": str(gate)})
    assert await anext(busy.content.iter_chunks()) == (b"part 0\n", True)  # the worker waits
    queued = asyncio.ensure_future(gw.http.post("/predictions/streaming", json={"parts": 1}))
    describe = f"http://127.0.0.1:{private_torchserve.ports.management}/models/streaming"
    async with aiohttp.ClientSession() as management:
        async def pending() -> bool:
            async with management.get(describe) as reply:
                return bool((await reply.json())[0]["jobQueueStatus"]["pendingRequests"] == 1)

        await wait_until(pending)

    refused = await gw.http.post("/predictions/streaming", json={"parts": 1})
    assert refused.status == 503
    assert refused.headers["Retry-After"] == "1"
    assert "has no worker to serve inference request" in (await refused.json())["message"]

    gate.touch()
    assert [d async for d, _ in busy.content.iter_chunks() if d] == [b"part 1\n", b"done\n"]
    answered = await queued
    assert (answered.status, await answered.read()) == (200, b"part 0\ndone\n")
