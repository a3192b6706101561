"""The TorchServe backend against a real TorchServe (tests.servers.torchserve): every front door
reaches it, versions and labels route, its errors come back as ours, its model status and the
handler's signature are answered, and a streaming handler's parts are relayed as they come; over
its gRPC inference API (the default) and over its REST one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import numpy as np
import pytest
from google.protobuf import empty_pb2

from protos.inference import grpc_service_pb2 as pb
from protos.tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from protos.tensorflow_serving.apis import model_pb2, predict_pb2
from protos.torchserve import inference_pb2_grpc as inference_grpc
from protos.torchserve import management_pb2, management_pb2_grpc
from tests.log_support import errors_logged
from tests.servers.running_gateway import RunningGateway, StartGateway
from tests.servers.tfserving_standin import decode_tensor
from tests.servers.torchserve_server import TorchServe, tiny_answer, torchserve_config
from tests.waiting import wait_until

pytest_plugins = ["tests.servers.fixtures", "tests.servers.torchserve"]

ROWS = [[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.0, 2.0]]
MODELS = ("tiny", "failing", "streaming")


@pytest.fixture(params=["grpc", "rest"])
async def tsgw(request: pytest.FixtureRequest, start_gateway: StartGateway,
               torchserve: TorchServe) -> RunningGateway:
    """A gateway routing `tiny`, `failing` and `streaming` to TorchServe, over each protocol."""
    return await start_gateway(torchserve_config(torchserve, protocol=request.param,
                                                 models=MODELS))


def x_tensor(rows: list[list[float]]) -> tensor_pb2.TensorProto:
    array = np.asarray(rows, np.float32)
    return tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT, tensor_content=array.astype("<f4").tobytes(),
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in array.shape]))


def predict_request(rows: list[list[float]], *, version: int | None = None,
                    label: str | None = None) -> predict_pb2.PredictRequest:
    spec = model_pb2.ModelSpec(name="tiny")
    if version is not None:
        spec.version.value = version
    if label is not None:
        spec.version_label = label
    return predict_pb2.PredictRequest(model_spec=spec, inputs={"x": x_tensor(rows)})


def infer_request(rows: list[list[float]], version: str = "") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="tiny", model_version=version)
    x = request.inputs.add(name="x", datatype="FP32", shape=[len(rows), len(rows[0])])
    x.contents.fp32_contents.extend(v for row in rows for v in row)
    return request


def v2_body(rows: list[list[float]]) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [len(rows), len(rows[0])],
                        "data": [v for row in rows for v in row]}]}


async def ok_json(response: aiohttp.ClientResponse) -> Any:
    """The JSON reply, whatever its content type: TorchServe sends none for a handler's."""
    assert response.status == 200, await response.text()
    return json.loads(await response.read())


# every front door reaches TorchServe


async def test_torchserve_rest_passes_the_body_through(tsgw: RunningGateway) -> None:
    for body in ({"x": ROWS}, ROWS):  # the handler takes either
        reply = await ok_json(await tsgw.http.post("/predictions/tiny", json=body))
        np.testing.assert_allclose(reply["probabilities"], tiny_answer(ROWS), rtol=1e-6)


async def test_tfserving_rest_reaches_torchserve_typed_by_the_handlers_signature(
        tsgw: RunningGateway) -> None:
    reply = await ok_json(await tsgw.http.post("/v1/models/tiny:predict",
                                               json={"instances": ROWS}))
    np.testing.assert_allclose(reply["predictions"], tiny_answer(ROWS), rtol=1e-6)


async def test_v2_rest_reaches_torchserve(tsgw: RunningGateway) -> None:
    reply = await ok_json(await tsgw.http.post("/v2/models/tiny/infer", json=v2_body(ROWS)))
    [output] = reply["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("probabilities", "FP64",
                                                                      [2, 3])
    np.testing.assert_allclose(np.reshape(output["data"], (2, 3)), tiny_answer(ROWS), rtol=1e-6)


async def test_tfserving_grpc_reaches_torchserve(tsgw: RunningGateway) -> None:
    reply = await tsgw.predict.Predict(predict_request(ROWS), timeout=10)
    assert reply.model_spec.name == "tiny"
    assert not reply.model_spec.HasField("version")  # TorchServe does not say which answered
    np.testing.assert_allclose(decode_tensor(reply.outputs["probabilities"]), tiny_answer(ROWS),
                               rtol=1e-6)


async def test_v2_grpc_reaches_torchserve(tsgw: RunningGateway) -> None:
    reply = await tsgw.v2.ModelInfer(infer_request(ROWS), timeout=10)
    [output] = reply.outputs
    assert (output.name, output.datatype, list(output.shape)) == ("probabilities", "FP64",
                                                                  [2, 3])
    probabilities = np.frombuffer(reply.raw_output_contents[0], "<f8").reshape(2, 3)
    np.testing.assert_allclose(probabilities, tiny_answer(ROWS), rtol=1e-6)


# versions and labels


async def test_versions_route_through_every_rest_dialect(tsgw: RunningGateway) -> None:
    posts = [("/predictions/tiny/2", {"x": ROWS}, "probabilities"),
             ("/v1/models/tiny/versions/2:predict", {"instances": ROWS}, "predictions"),
             ("/v1/models/tiny/labels/canary:predict", {"instances": ROWS}, "predictions")]
    for path, body, key in posts:
        reply = await ok_json(await tsgw.http.post(path, json=body))
        np.testing.assert_allclose(reply[key], tiny_answer(ROWS, "2"), rtol=1e-6, err_msg=path)
    reply = await ok_json(await tsgw.http.post("/v2/models/tiny/versions/2/infer",
                                               json=v2_body(ROWS)))
    assert reply["model_version"] == "2"
    np.testing.assert_allclose(np.reshape(reply["outputs"][0]["data"], (2, 3)),
                               tiny_answer(ROWS, "2"), rtol=1e-6)
    stable = await ok_json(await tsgw.http.post("/v1/models/tiny/labels/stable:predict",
                                                json={"instances": ROWS}))
    np.testing.assert_allclose(stable["predictions"], tiny_answer(ROWS, "1"), rtol=1e-6)


async def test_versions_route_through_grpc(tsgw: RunningGateway) -> None:
    for request in (predict_request(ROWS, version=2), predict_request(ROWS, label="canary")):
        reply = await tsgw.predict.Predict(request, timeout=10)
        assert reply.model_spec.version.value == 2
        np.testing.assert_allclose(decode_tensor(reply.outputs["probabilities"]),
                                   tiny_answer(ROWS, "2"), rtol=1e-6)
    reply = await tsgw.v2.ModelInfer(infer_request(ROWS, version="2"), timeout=10)
    np.testing.assert_allclose(np.frombuffer(reply.raw_output_contents[0], "<f8"),
                               tiny_answer(ROWS, "2").ravel(), rtol=1e-6)


async def test_unknown_version_is_404_with_torchserves_message(tsgw: RunningGateway) -> None:
    response = await tsgw.http.post("/predictions/tiny/9", json={"x": ROWS})
    assert response.status == 404
    assert await response.json() == {  # TorchServe's own, as the dialect answers errors
        "code": 404, "type": "ModelVersionNotFoundException",
        "message": "Model version: 9 does not exist for model: tiny"}


# TorchServe's errors


async def test_handler_that_raises_is_torchserves_503_on_every_door(
        tsgw: RunningGateway) -> None:
    for path, body, key in (("/predictions/failing", {"x": ROWS}, "message"),
                            ("/v2/models/failing/infer", v2_body(ROWS), "error")):
        response = await tsgw.http.post(path, json=body)
        assert response.status == 503, path
        assert (await response.json())[key] == "Prediction failed"  # no backend, no address
        assert "Retry-After" not in response.headers  # the handler failed: not worth retrying


# status, metadata, health


async def test_status_and_signature_come_from_torchserves_management_api(
        tsgw: RunningGateway) -> None:
    status = await ok_json(await tsgw.http.get("/v1/models/tiny"))
    assert [(s["version"], s["state"]) for s in status["model_version_status"]] == [
        ("1", "AVAILABLE"), ("2", "AVAILABLE")]
    metadata = await ok_json(await tsgw.http.get("/v2/models/tiny"))
    assert metadata == {
        "name": "tiny", "versions": ["1", "2"], "platform": "torchserve",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}]}
    assert (await tsgw.http.get("/v2/models/tiny/versions/2/ready")).status == 200
    assert (await tsgw.http.get("/v2/models/tiny/versions/9/ready")).status == 404


async def test_models_torchserve_holds_are_routed_without_config(
        start_gateway: StartGateway, torchserve: TorchServe) -> None:
    gw = await start_gateway(torchserve_config(torchserve, models=()))
    models = await ok_json(await gw.http.get("/models"))
    assert {"tiny", "failing", "streaming"} <= {m["name"] for m in models["models"]}
    reply = await ok_json(await gw.http.post("/predictions/tiny", json=ROWS))
    np.testing.assert_allclose(reply["probabilities"], tiny_answer(ROWS), rtol=1e-6)


async def test_ping_answers_healthy_like_torchserve(tsgw: RunningGateway) -> None:
    assert await ok_json(await tsgw.http.get("/ping")) == {"status": "Healthy"}


# streaming


async def test_streamed_parts_are_relayed_as_chunks_as_they_come(
        tsgw: RunningGateway, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    response = await tsgw.http.post("/predictions/streaming",
                                    json={"parts": 3, "gate": str(gate)})
    assert response.status == 200
    assert response.headers["Transfer-Encoding"] == "chunked"
    chunks = response.content.iter_chunks()
    # the handler holds every later part until the gate opens: this one came on its own
    assert await anext(chunks) == (b"part 0\n", True)
    gate.touch()
    rest = [data async for data, end in chunks if data]
    assert rest == [b"part 1\n", b"part 2\n", b"done\n"]


async def test_our_protos_speak_to_torchserve_itself(torchserve: TorchServe) -> None:
    async with grpc.aio.insecure_channel(torchserve.grpc_inference) as channel:
        ping = await inference_grpc.InferenceAPIsServiceStub(channel).Ping(empty_pb2.Empty(),
                                                                          timeout=10)
    assert json.loads(ping.health) == {"status": "Healthy"}
    async with grpc.aio.insecure_channel(torchserve.grpc_management) as channel:
        listed = await management_pb2_grpc.ManagementAPIsServiceStub(channel).ListModels(
            management_pb2.ListModelsRequest(limit=10), timeout=10)
    assert [m["modelName"] for m in json.loads(listed.msg)["models"]] == [
        "echo", "failing", "streaming", "tiny"]


async def test_a_stream_that_fails_after_it_started_is_cut_not_completed(
        tsgw: RunningGateway) -> None:
    response = await tsgw.http.post("/predictions/streaming", json={"parts": 3, "fail": True})
    assert response.status == 200  # sent with the first part, before the handler failed
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()
    after = await tsgw.http.post("/predictions/streaming", json={"parts": 1})
    assert (after.status, await after.read()) == (200, b"part 0\ndone\n")


async def test_a_client_leaving_a_stream_midway_is_no_error(
        tsgw: RunningGateway, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """It ends the request and the backend's stream, counted as 499 (nginx's "Client Closed
    Request"), not as a failure of the gateway."""
    gate = tmp_path / "gate"
    registry = tsgw.http.gateway.metrics.registry  # type: ignore[attr-defined]
    response = await tsgw.http.post("/predictions/streaming",
                                    json={"parts": 3, "gate": str(gate)})
    try:
        assert await anext(response.content.iter_chunks()) == (b"part 0\n", True)
        response.close()  # the client hangs up
        await wait_until(lambda: registry.get_sample_value("gateway_requests_total", {
            "frontend": "torchserve", "model": "streaming", "variant": "",
            "status": "499"}) == 1)
    finally:
        gate.touch()  # the handler's later parts come, for nobody
    assert registry.get_sample_value("gateway_inflight_requests") == 0
    assert not errors_logged(caplog)
    after = await tsgw.http.post("/predictions/streaming", json={"parts": 1})
    assert (after.status, await after.read()) == (200, b"part 0\ndone\n")
