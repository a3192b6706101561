"""TorchServe going away under a running gateway, and a backend with an endpoint that is gone:
clear 503s for TorchServe's models while the in-process `demo` keeps serving, and requests that
fail over to the endpoint that is up."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from protos.tensorflow_serving.apis import model_pb2, predict_pb2
from tests.servers.running_gateway import StartGateway
from tests.servers.tfserving_standin import stable_answer
from tests.servers.torchserve_server import TorchServe, free_port, tiny_answer, torchserve_config

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
    message = (await response.json())["error"]
    assert message.startswith(
        f"TorchServe backend ts ({private_torchserve.grpc_inference}) is unreachable: ")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.predict.Predict(predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name="tiny")), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert (await gw.http.get("/ping")).status == 500  # as TorchServe says Unhealthy

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
    for _ in range(3):  # each tries the dead endpoint first: both are idle
        response = await gw.http.post("/predictions/tiny", json=ROWS)
        assert response.status == 200, await response.text()
        np.testing.assert_allclose((await response.json())["probabilities"], tiny_answer(ROWS),
                                   rtol=1e-6)
    status = await gw.http.get("/v1/models/tiny")
    assert status.status == 200, await status.text()
