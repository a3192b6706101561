"""Request ids: the caller's `X-Request-Id` (or `x-request-id` metadata) when it is printable
ASCII of at most 128 characters, else a new one; echoed in every reply (errors and refusals
included), sent to the backends (TF Serving's and TorchServe's gRPC metadata, TorchServe's REST
header), written in the access line and set on the server span."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict

from adapters.torchserve.config import TorchServeAdapterConfig
from adapters.torchserve.grpc_inference import GrpcInference
from adapters.torchserve.rest_inference import RestInference
from adapters.torchserve.transport import PredictCall
from gateway.codecs import tensor_proto
from gateway.telemetry import request_ids
from protos.tensorflow_serving.apis import model_pb2, predict_pb2
from protos.torchserve import inference_pb2, inference_pb2_grpc
from tests.auth_support import hs_provider
from tests.servers.otlp_receiver import OtlpReceiver
from tests.servers.running_gateway import RunningGateway, StartGateway
from tests.servers.tfserving_standin import TfServingStandIn
from tests.waiting import wait_until

pytest_plugins = ["tests.servers.fixtures"]

V2_BODY = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
MADE = re.compile(r"[0-9a-f]{32}")  # an id the gateway made
PREDICT = "/tensorflow.serving.PredictionService/Predict"


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [r.access for r in caplog.records  # type: ignore[attr-defined]
            if r.name == "gateway.access"]


def predict_request(model: str = "tfdemo") -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=model))
    request.inputs["x"].CopyFrom(tensor_proto.from_array(np.ones((1, 4), np.float32)))
    return request


@pytest.mark.parametrize("offered", ["order-42", "x" * 128, " spaces, ~!@#$%^&*()[]{}<>\"' "])
def test_printable_ascii_of_at_most_128_characters_is_kept(offered: str) -> None:
    assert request_ids.accept(offered) == offered


@pytest.mark.parametrize("offered", [None, "", "x" * 129, "café", "a\tb", "a\x00b", "\x7f",
                                     "two\nlines", "\udcff"])
def test_anything_else_is_replaced_by_a_new_id(offered: str | None) -> None:
    made = request_ids.accept(offered)
    assert MADE.fullmatch(made) and made != offered


def test_made_ids_do_not_repeat() -> None:
    assert len({request_ids.new_request_id() for _ in range(10_000)}) == 10_000


# REST


async def test_rest_echoes_and_logs_the_callers_id(client: TestClient,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        reply = await client.post("/v2/models/demo/infer", json=V2_BODY,
                                  headers={"X-Request-Id": "order-42"})
    assert reply.status == 200
    assert reply.headers["X-Request-Id"] == "order-42"
    [line] = access_lines(caplog)
    assert line["request_id"] == "order-42"


@pytest.mark.parametrize(("method", "path", "status"), [
    ("POST", "/v2/models/demo/infer", 200),
    ("POST", "/v2/models/nope/infer", 404),  # no such model
    ("GET", "/no/such/endpoint", 404),  # no route: before any handler ran
    ("DELETE", "/v2/models/demo/infer", 405),
    ("POST", "/v1/models/demo:predict", 400),  # not JSON
    ("GET", "/healthz", 200),
])
async def test_rest_makes_an_id_for_a_caller_that_sent_none_errors_included(
        client: TestClient, caplog: pytest.LogCaptureFixture, method: str, path: str,
        status: int) -> None:
    body = json.dumps(V2_BODY) if "infer" in path else "not json"
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        first = await client.request(method, path, data=body)
        second = await client.request(method, path, data=body)
    assert first.status == second.status == status
    made = first.headers["X-Request-Id"]
    assert MADE.fullmatch(made) and second.headers["X-Request-Id"] != made
    if path != "/healthz":  # a probe: no access line
        assert access_lines(caplog)[0]["request_id"] == made


async def test_an_id_refused_over_rest_is_replaced_not_echoed(client: TestClient) -> None:
    for offered in ("x" * 129, "tab\there"):
        reply = await client.get("/healthz", headers={"X-Request-Id": offered})
        assert MADE.fullmatch(reply.headers["X-Request-Id"])
    # Bytes beyond ASCII, sent as they are (aiohttp's client would refuse to send them).
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Request-Id: caf\xc3\xa9\xff<\r\n"
                 b"Connection: close\r\n\r\n")
    head = (await reader.read()).split(b"\r\n\r\n")[0].decode("latin-1")
    writer.close()
    assert head.startswith("HTTP/1.1 200")
    [echoed] = re.findall(r"(?im)^X-Request-Id: (.*)$", head)
    assert MADE.fullmatch(echoed.strip())


async def test_rest_sends_the_id_to_tf_serving(gw: RunningGateway,
                                               standin: TfServingStandIn) -> None:
    given = await gw.http.post("/v1/models/tfdemo:predict", json={"instances": [[1.0] * 4]},
                               headers={"X-Request-Id": "from-rest"})
    made = await gw.http.post("/v1/models/tfdemo:predict", json={"instances": [[1.0] * 4]})
    assert given.status == made.status == 200
    first, second = standin.calls("Predict")
    assert first.metadata["x-request-id"] == "from-rest"
    assert second.metadata["x-request-id"] == made.headers["X-Request-Id"]


# gRPC


async def test_grpc_echoes_logs_and_forwards_the_callers_id(
        gw: RunningGateway, standin: TfServingStandIn,
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        call = gw.predict.Predict(predict_request(), metadata=[("x-request-id", "from-grpc")])
        await call
        trailing = dict(await call.trailing_metadata())
    assert trailing["x-request-id"] == "from-grpc"
    [predict] = standin.calls("Predict")
    assert predict.metadata["x-request-id"] == "from-grpc"
    [line] = access_lines(caplog)
    assert (line["request_id"], line["request"]) == ("from-grpc", PREDICT)


async def test_grpc_makes_an_id_for_a_caller_that_sent_none_failures_included(
        gw: RunningGateway, standin: TfServingStandIn,
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        call = gw.predict.Predict(predict_request())
        await call
        made = dict(await call.trailing_metadata())["x-request-id"]
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await gw.predict.Predict(predict_request("nope"),
                                     metadata=[("x-request-id", "y" * 129)])
    assert MADE.fullmatch(made)
    assert standin.calls("Predict")[0].metadata["x-request-id"] == made
    assert failed.value.code() == grpc.StatusCode.NOT_FOUND
    replaced = dict(failed.value.trailing_metadata() or ())["x-request-id"]
    assert MADE.fullmatch(replaced) and replaced != made
    ok, not_found = access_lines(caplog)
    assert (ok["request_id"], not_found["request_id"]) == (made, replaced)


async def test_a_refused_grpc_call_carries_its_id(start_gateway: StartGateway,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    gw = await start_gateway(f"[auth]\nenabled = true\n{hs_provider()}")
    with caplog.at_level(logging.INFO, logger="gateway.access"), \
            pytest.raises(grpc.aio.AioRpcError) as refused:
        await gw.predict.Predict(predict_request(), metadata=[("x-request-id", "anon-1")])
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert dict(refused.value.trailing_metadata() or ())["x-request-id"] == "anon-1"
    [line] = access_lines(caplog)
    assert (line["request_id"], line["request"], line["status"], line["bytes_in"]) == (
        "anon-1", PREDICT, "UNAUTHENTICATED", 0)  # its message was never read


# Spans


async def test_the_server_span_carries_the_id(traced: OtlpReceiver,
                                              start_gateway: StartGateway) -> None:
    gw = await start_gateway()
    rest = await gw.http.post("/v2/models/demo/infer", json=V2_BODY,
                              headers={"X-Request-Id": "span-rest"})
    assert rest.status == 200
    await gw.predict.Predict(predict_request(), metadata=[("x-request-id", "span-grpc")])
    servers: dict[str, str] = {}

    def both_arrived() -> bool:
        servers.update({s.attributes.get("gateway.request_id", ""): s.name
                        for s in traced.spans() if s.kind == "server"})
        return len(servers) == 2

    await wait_until(both_arrived)
    assert servers.keys() == {"span-rest", "span-grpc"}
    assert servers["span-rest"] == "POST /v2/models/{model}/infer"
    assert servers["span-grpc"].endswith("tensorflow.serving.PredictionService/Predict")


# TorchServe's transports, against servers that keep what they were sent


@pytest.fixture
async def torchserve_rest() -> AsyncIterator[tuple[TestServer, list[CIMultiDict[str]]]]:
    received: list[CIMultiDict[str]] = []

    async def predictions(request: web.Request) -> web.Response:
        received.append(request.headers.copy())
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/predictions/{model}", predictions)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server, received
    await server.close()


class _Predictions(inference_pb2_grpc.InferenceAPIsServiceServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []

    async def Predictions(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.received.append(dict(context.invocation_metadata()))
        return inference_pb2.PredictionResponse(prediction=b"{}")


@pytest.fixture
async def torchserve_grpc() -> AsyncIterator[tuple[str, _Predictions]]:
    servicer = _Predictions()
    server = grpc.aio.server()
    inference_pb2_grpc.add_InferenceAPIsServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}", servicer
    await server.stop(0)


def ts_call() -> PredictCall:
    return PredictCall(model="tiny", version=None, body=b"{}", content_type="application/json",
                       seconds=5.0)


async def predicted_for(request_id: str, predict: Callable[[], Any]) -> None:
    bound = request_ids.bind(request_id)
    try:
        await predict()
    finally:
        request_ids.unbind(bound)


async def test_torchserve_rest_gets_the_id_as_a_header(
        torchserve_rest: tuple[TestServer, list[CIMultiDict[str]]]) -> None:
    server, received = torchserve_rest
    inference = RestInference(TorchServeAdapterConfig(
        name="ts", management_endpoints=("127.0.0.1:1",), protocol="rest",
        rest_endpoints=(f"http://127.0.0.1:{server.port}",)))
    try:
        await predicted_for("to-torchserve-rest", lambda: inference.predict(ts_call()))
        await inference.predict(ts_call())  # made for no request: no id
    finally:
        await inference.close()
    assert received[0]["X-Request-Id"] == "to-torchserve-rest"
    assert "X-Request-Id" not in received[1]


async def test_torchserve_grpc_gets_the_id_as_metadata(
        torchserve_grpc: tuple[str, _Predictions]) -> None:
    address, servicer = torchserve_grpc
    inference = GrpcInference(TorchServeAdapterConfig(
        name="ts", management_endpoints=("127.0.0.1:1",), endpoints=(address,)))
    try:
        await predicted_for("to-torchserve-grpc", lambda: inference.predict(ts_call()))
    finally:
        await inference.close()
    assert servicer.received[0]["x-request-id"] == "to-torchserve-grpc"
