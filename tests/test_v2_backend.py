"""The v2 backend (`kind = "v2"`) against a real Triton (tests.servers.triton) and a real
MLServer (tests.servers.mlserver): every front door reaches both, and answers as the server
itself answers when asked directly; BYTES and INT64 travel raw both ways; parameters,
versions and labels reach Triton; metadata and readiness come from the server; unknown
models and versions are 404, bad inputs 400, a stopped server 503 without its address, and a
client's deadline cuts the backend call short; Triton continues the gateway's trace."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import numpy as np
import pytest

from adapters.v2 import V2AdapterConfig, messages
from gateway.codecs import v2_grpc
from gateway.config import ConfigError, load_config
from gateway.errors import BadRequest
from gateway.types import InferRequest, ModelRef, RequestContext
from protos.inference import grpc_service_pb2 as pb
from protos.inference import grpc_service_pb2_grpc
from protos.tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from protos.tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    predict_pb2,
)
from tests.servers.mlserver_server import MLServer
from tests.servers.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.servers.running_gateway import RunningGateway, StartGateway
from tests.servers.tfserving_standin import decode_tensor
from tests.servers.triton_server import Triton, affine_answer, words_answer
from tests.waiting import wait_until

pytest_plugins = ["tests.servers.fixtures", "tests.servers.triton", "tests.servers.mlserver"]

ROWS = [[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.0, 2.0]]
TEXTS = [b"gateway", b"v2", b""]
SERVICE = "inference.GRPCInferenceService"


def triton_config(triton: Triton) -> str:
    # `ghost` is routed to Triton, which has no such model
    return triton.gateway_toml("triton", {
        "affine": "labels = { stable = 1, canary = 2 }", "words": "", "ghost": ""})


def mlserver_config(mlserver: MLServer) -> str:
    return mlserver.gateway_toml("mls", {"classes": ""})


@pytest.fixture
async def tgw(start_gateway: StartGateway, triton: Triton) -> RunningGateway:
    return await start_gateway(triton_config(triton))


@pytest.fixture
async def mgw(start_gateway: StartGateway, mlserver: MLServer) -> RunningGateway:
    return await start_gateway(mlserver_config(mlserver))


def v2_body(rows: list[list[float]], **parameters: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [
        len(rows), len(rows[0])], "data": [v for row in rows for v in row]}]}
    if parameters:
        body["parameters"] = parameters
    return body


def infer_request(model: str, rows: list[list[float]], version: str = "",
                  **parameters: float) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    request.inputs.add(name="x", datatype="FP32", shape=[len(rows), len(rows[0])])
    request.raw_input_contents.append(np.asarray(rows, "<f4").tobytes())
    for key, value in parameters.items():
        request.parameters[key].double_param = value
    return request


def predict_request(model: str, rows: list[list[float]], *, label: str = ""
                    ) -> predict_pb2.PredictRequest:
    array = np.asarray(rows, np.float32)
    spec = model_pb2.ModelSpec(name=model)
    if label:
        spec.version_label = label
    return predict_pb2.PredictRequest(model_spec=spec, inputs={"x": tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT, tensor_content=array.astype("<f4").tobytes(),
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in array.shape]))})


async def ok_json(response: aiohttp.ClientResponse) -> Any:
    assert response.status == 200, await response.text()
    return await response.json()


async def direct_json(url: str, body: dict[str, Any] | None = None) -> Any:
    """What the server itself answers on its REST API."""
    async with aiohttp.ClientSession() as session:
        call = session.get(url) if body is None else session.post(url, json=body)
        async with call as response:
            return await ok_json(response)


async def direct_infer(address: str, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
    """What the server itself answers on its gRPC API."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        reply: pb.ModelInferResponse = await stub.ModelInfer(request, timeout=10)
        return reply


def raw_outputs(reply: pb.ModelInferResponse) -> dict[str, tuple[str, list[int], bytes]]:
    return {o.name: (o.datatype, list(o.shape), reply.raw_output_contents[i])
            for i, o in enumerate(reply.outputs)}


def outputs_of(reply: dict[str, Any]) -> dict[str, Any]:
    """A v2 JSON reply's outputs, without the parameters a server adds (MLServer's codec)."""
    return {o["name"]: (o["datatype"], o["shape"], o["data"]) for o in reply["outputs"]}


def test_config_takes_endpoints_and_the_pools_keys(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('[adapters.t]\nkind = "v2"\nendpoints = ["127.0.0.1:8001"]\n'
                    "max_message_bytes = 4096\n")
    config = load_config(path).adapters["t"]
    assert isinstance(config, V2AdapterConfig)
    assert (config.endpoints, config.pool.max_message_bytes) == (("127.0.0.1:8001",), 4096)
    for body, problem in (("", r":1: adapters.t.endpoints: expected a non-empty list"),
                          ('endpoints = ["triton"]', r":3: adapters.t.endpoints: expected "),
                          ('endpoints = ["h:1"]\nprotocol = "rest"',
                           r":4: adapters.t.protocol: unknown key")):
        path.write_text(f'[adapters.t]\nkind = "v2"\n{body}\n')
        with pytest.raises(ConfigError, match=problem):
            load_config(path)


def test_parameters_keep_their_types_and_tensors_go_raw() -> None:
    parameters = {"flag": True, "count": -3, "big": 2 ** 63, "ratio": 0.5, "name": "é"}
    request = InferRequest(ModelRef("m"), RequestContext("test", {}, 0.0), inputs={
        "x": np.arange(4, dtype=np.float16).reshape(2, 2),
        "text": np.array([b"a", b"bc"], dtype=object)}, outputs=("y",), parameters=parameters)
    proto = messages.infer_request(request, "3")
    assert (proto.model_name, proto.model_version, [o.name for o in proto.outputs]) == (
        "m", "3", ["y"])
    assert {k: p.WhichOneof("parameter_choice") for k, p in proto.parameters.items()} == {
        "flag": "bool_param", "count": "int64_param", "big": "uint64_param",
        "ratio": "double_param", "name": "string_param"}
    assert v2_grpc.parameters(proto.parameters) == parameters  # what the v2 door reads back
    assert [(t.name, t.datatype, list(t.shape)) for t in proto.inputs] == [
        ("x", "FP16", [2, 2]), ("text", "BYTES", [2])]
    assert proto.raw_input_contents[1] == b"\x01\x00\x00\x00a\x02\x00\x00\x00bc"
    request.parameters = {"huge": 2 ** 64}
    with pytest.raises(BadRequest, match="parameter 'huge'"):
        messages.infer_request(request, "")


# Triton through every front door


async def test_v2_rest_answers_as_triton_does(tgw: RunningGateway, triton: Triton) -> None:
    body = v2_body(ROWS)
    reply = await ok_json(await tgw.http.post("/v2/models/affine/infer", json=body))
    direct = await direct_json(f"{triton.http_url}/v2/models/affine/infer", body)
    assert outputs_of(reply) == outputs_of(direct)
    assert (reply["model_name"], reply["model_version"]) == ("affine", "2")
    np.testing.assert_array_equal(np.reshape(reply["outputs"][0]["data"], (2, 4)),
                                  affine_answer(ROWS))


async def test_v2_grpc_answers_as_triton_does(tgw: RunningGateway, triton: Triton) -> None:
    request = infer_request("affine", ROWS)
    reply = await tgw.v2.ModelInfer(request, timeout=10)
    direct = await direct_infer(triton.grpc_address, request)
    assert raw_outputs(reply) == raw_outputs(direct)
    assert reply.model_version == "2"
    np.testing.assert_array_equal(np.frombuffer(reply.raw_output_contents[0], "<f4"),
                                  affine_answer(ROWS).ravel())


async def test_tfserving_rest_and_grpc_reach_triton(tgw: RunningGateway) -> None:
    reply = await ok_json(await tgw.http.post("/v1/models/affine:predict",
                                              json={"instances": ROWS}))
    np.testing.assert_array_equal(reply["predictions"], affine_answer(ROWS))
    predicted = await tgw.predict.Predict(predict_request("affine", ROWS), timeout=10)
    assert predicted.model_spec.version.value == 2
    np.testing.assert_array_equal(decode_tensor(predicted.outputs["y"]), affine_answer(ROWS))


async def test_torchserve_dialect_reaches_triton(tgw: RunningGateway) -> None:
    for body in ({"x": ROWS}, ROWS):
        reply = await ok_json(await tgw.http.post("/predictions/affine", json=body))
        np.testing.assert_array_equal(reply["y"], affine_answer(ROWS))


async def test_bytes_and_int64_travel_raw_both_ways(tgw: RunningGateway, triton: Triton
                                                    ) -> None:
    upper, length = words_answer(TEXTS)
    request = pb.ModelInferRequest(model_name="words")
    request.inputs.add(name="text", datatype="BYTES", shape=[len(TEXTS), 1])
    request.raw_input_contents.append(
        b"".join(len(t).to_bytes(4, "little") + t for t in TEXTS))
    reply = await tgw.v2.ModelInfer(request, timeout=10)
    assert raw_outputs(reply) == raw_outputs(await direct_infer(triton.grpc_address, request))
    assert np.frombuffer(raw_outputs(reply)["length"][2], "<i8").tolist() == length.ravel(
        ).tolist()
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(TEXTS), 1],
                        "data": [t.decode() for t in TEXTS]}]}
    rest = await ok_json(await tgw.http.post("/v2/models/words/infer", json=body))
    assert outputs_of(rest) == {
        "upper": ("BYTES", [3, 1], [u.decode() for u in upper.ravel()]),
        "length": ("INT64", [3, 1], length.ravel().tolist())}
    tf = await ok_json(await tgw.http.post("/v1/models/words:predict", json={
        "instances": [{"text": [{"b64": base64.b64encode(t).decode()}]} for t in TEXTS]}))
    assert [p["length"] for p in tf["predictions"]] == length.tolist()


async def test_parameters_reach_triton_from_rest_and_grpc(tgw: RunningGateway) -> None:
    reply = await ok_json(await tgw.http.post("/v2/models/affine/infer",
                                              json=v2_body(ROWS, scale=3)))
    np.testing.assert_array_equal(np.reshape(reply["outputs"][0]["data"], (2, 4)),
                                  affine_answer(ROWS, scale=3))
    grpc_reply = await tgw.v2.ModelInfer(infer_request("affine", ROWS, scale=-1.5), timeout=10)
    np.testing.assert_array_equal(np.frombuffer(grpc_reply.raw_output_contents[0], "<f4"),
                                  affine_answer(ROWS, scale=-1.5).ravel())
    response = await tgw.http.post("/v2/models/affine/infer",
                                   json=v2_body(ROWS, scale={"nested": 1}))
    assert response.status == 400
    assert "parameter 'scale'" in (await response.json())["error"]


async def test_versions_and_labels_reach_triton(tgw: RunningGateway) -> None:
    one = await ok_json(await tgw.http.post("/v2/models/affine/versions/1/infer",
                                            json=v2_body(ROWS)))
    assert one["model_version"] == "1"
    np.testing.assert_array_equal(np.reshape(one["outputs"][0]["data"], (2, 4)),
                                  affine_answer(ROWS, "1"))
    for label, version in (("stable", "1"), ("canary", "2")):
        reply = await ok_json(await tgw.http.post(f"/v1/models/affine/labels/{label}:predict",
                                                  json={"instances": ROWS}))
        np.testing.assert_array_equal(reply["predictions"], affine_answer(ROWS, version))
        predicted = await tgw.predict.Predict(predict_request("affine", ROWS, label=label),
                                              timeout=10)
        assert predicted.model_spec.version.value == int(version)


# metadata and readiness come from the server


async def test_metadata_is_tritons(tgw: RunningGateway, triton: Triton) -> None:
    for path in ("/v2/models/affine", "/v2/models/affine/versions/1", "/v2/models/words"):
        assert await ok_json(await tgw.http.get(path)) == await direct_json(
            f"{triton.http_url}{path}"), path
    grpc_reply = await tgw.v2.ModelMetadata(pb.ModelMetadataRequest(name="affine"), timeout=10)
    assert (list(grpc_reply.versions), grpc_reply.platform) == (["1", "2"], "python")
    tf = await ok_json(await tgw.http.get("/v1/models/affine/metadata"))
    assert tf["model_spec"]["version"] == "2"
    inputs = tf["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]
    assert inputs["x"]["dtype"] == "DT_FLOAT"


async def test_readiness_and_status_come_from_triton(tgw: RunningGateway) -> None:
    status = await ok_json(await tgw.http.get("/v1/models/affine"))
    assert [(s["version"], s["state"]) for s in status["model_version_status"]] == [
        ("1", "AVAILABLE"), ("2", "AVAILABLE")]
    assert (await tgw.http.get("/v2/models/affine/versions/1/ready")).status == 200
    ready = await tgw.v2.ModelReady(pb.ModelReadyRequest(name="words"), timeout=10)
    assert ready.ready
    assert (await tgw.http.get("/v2/models/affine/versions/9/ready")).status == 404
    assert (await tgw.http.get("/v2/models/ghost/ready")).status == 404


# trace context


async def test_triton_continues_the_trace_from_the_gateways_client_span(
        traced: OtlpReceiver, start_gateway: StartGateway,
        traced_triton: tuple[Triton, list[dict[str, Any]]]) -> None:
    server, triton_spans = traced_triton
    gw = await start_gateway(triton_config(server))
    trace_id = "5bf92f3577b34da6a3ce929d0e0e4736"
    await gw.v2.ModelInfer(infer_request("affine", ROWS), timeout=10, metadata=[
        ("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01")])


    def backend_call(span: ReceivedSpan) -> bool:  # the signature's ModelMetadata is another
        return (span.trace_id, span.kind, span.name) == (trace_id, "client",
                                                         f"{SERVICE}/ModelInfer")

    # both exporters batch, and a busy machine delays them
    await wait_until(lambda: traced.spans(backend_call), within=30)
    [client] = traced.spans(backend_call)
    assert client.attributes["server.port"] == server.grpc_port

    def continued() -> list[dict[str, Any]]:
        return [s for s in triton_spans if (s["name"], s["traceId"]) == ("InferRequest",
                                                                         trace_id)]

    await wait_until(continued, within=30)
    assert [s.get("parentSpanId") for s in continued()] == [client.span_id], triton_spans


# errors


async def test_unknown_models_and_versions_are_404(tgw: RunningGateway) -> None:
    for path in ("/v2/models/ghost/infer", "/v2/models/affine/versions/9/infer",
                 "/v2/models/nowhere/infer"):
        response = await tgw.http.post(path, json=v2_body(ROWS))
        assert response.status == 404, path
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await tgw.v2.ModelInfer(infer_request("ghost", ROWS), timeout=10)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    response = await tgw.http.post("/v1/models/affine/labels/nightly:predict",
                                   json={"instances": ROWS})
    assert response.status == 404


async def test_bad_inputs_are_400_naming_the_problem(tgw: RunningGateway) -> None:
    response = await tgw.http.post("/v2/models/affine/infer", json=v2_body([[1.0, 2.0, 3.0]]))
    assert response.status == 400
    assert "input 'x': expected shape [-1, 4], got [1, 3]" in (await response.json())["error"]
    # past the gateway's checks, Triton's own INVALID_ARGUMENT comes back as 400
    body = {**v2_body(ROWS), "outputs": [{"name": "nope"}]}
    response = await tgw.http.post("/v2/models/affine/infer", json=body)
    assert response.status == 400
    message = (await response.json())["error"]
    assert message.startswith("backend: ") and "nope" in message
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await tgw.v2.ModelInfer(infer_request("affine", [[1.0, 2.0]]), timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_clients_deadline_bounds_the_backend_call(tgw: RunningGateway) -> None:
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await tgw.v2.ModelInfer(infer_request("affine", ROWS, delay_s=1.0), timeout=0.3)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 0.9


async def test_a_stopped_triton_is_503_without_its_address(start_gateway: StartGateway,
                                                           private_triton: Triton) -> None:
    gw = await start_gateway(triton_config(private_triton))
    await ok_json(await gw.http.post("/v2/models/affine/infer", json=v2_body(ROWS)))
    private_triton.stop()
    for path, body in (("/v2/models/affine/infer", v2_body(ROWS)),
                       ("/v1/models/affine:predict", {"instances": ROWS})):
        response = await gw.http.post(path, json=body)
        assert response.status == 503, path
        assert int(response.headers["Retry-After"]) >= 1
        text = await response.text()
        assert f"{private_triton.grpc_port}" not in text and "127.0.0.1" not in text
    assert (await gw.http.get("/v2/models/affine/ready")).status != 200


# MLServer through every front door


async def test_v2_rest_and_grpc_answer_as_mlserver_does(mgw: RunningGateway,
                                                        mlserver: MLServer) -> None:
    body = v2_body(ROWS)
    reply = await ok_json(await mgw.http.post("/v2/models/classes/infer", json=body))
    direct = await direct_json(f"{mlserver.http_url}/v2/models/classes/infer", body)
    assert outputs_of(reply) == outputs_of(direct)
    assert reply["model_version"] == "1"
    request = infer_request("classes", ROWS)
    grpc_reply = await mgw.v2.ModelInfer(request, timeout=10)
    assert raw_outputs(grpc_reply) == raw_outputs(await direct_infer(mlserver.grpc_address,
                                                                     request))


async def test_tfserving_and_torchserve_dialects_reach_mlserver(mgw: RunningGateway,
                                                                mlserver: MLServer) -> None:
    direct = await direct_json(f"{mlserver.http_url}/v2/models/classes/infer", v2_body(ROWS))
    classes = np.reshape(direct["outputs"][0]["data"], (2, 1)).tolist()
    reply = await ok_json(await mgw.http.post("/v1/models/classes:predict",
                                              json={"instances": ROWS}))
    assert reply["predictions"] == classes
    predicted = await mgw.predict.Predict(predict_request("classes", ROWS), timeout=10)
    assert decode_tensor(predicted.outputs["predict"]).tolist() == classes
    torchserve = await ok_json(await mgw.http.post("/predictions/classes", json={"x": ROWS}))
    assert torchserve == {"predict": classes}


async def test_mlserver_metadata_readiness_and_errors(mgw: RunningGateway,
                                                      mlserver: MLServer) -> None:
    metadata = await ok_json(await mgw.http.get("/v2/models/classes"))
    direct = await direct_json(f"{mlserver.http_url}/v2/models/classes")
    assert (metadata["inputs"], metadata["outputs"]) == (direct["inputs"], direct["outputs"])
    assert (await mgw.http.get("/v2/models/classes/ready")).status == 200
    # MLServer lists no versions: TF Serving's gRPC answers leave the version unset
    spec = model_pb2.ModelSpec(name="classes")
    tf_metadata = await mgw.predict.GetModelMetadata(get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=spec, metadata_field=["signature_def"]), timeout=10)
    assert not tf_metadata.model_spec.HasField("version")
    tf_status = await mgw.models.GetModelStatus(
        get_model_status_pb2.GetModelStatusRequest(model_spec=spec), timeout=10)
    assert [(s.version, s.state) for s in tf_status.model_version_status] == [
        (0, get_model_status_pb2.ModelVersionStatus.AVAILABLE)]
    # MLServer's runtime fails a wrong shape as an internal error; the gateway checks first
    response = await mgw.http.post("/v2/models/classes/infer", json=v2_body([[1.0, 2.0]]))
    assert response.status == 400
    assert "expected shape [-1, 4]" in (await response.json())["error"]
    response = await mgw.http.post("/v2/models/classes/versions/7/infer", json=v2_body(ROWS))
    assert response.status == 404
