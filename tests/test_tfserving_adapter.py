"""The TF Serving adapter end to end: REST requests to the gateway become gRPC calls on a TF
Serving stand-in (tests/servers), which computes real answers with ONNX Runtime and records
exactly what the gateway sent."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable

import grpc
import numpy as np
import pytest
from aiohttp.test_utils import TestClient
from onnx import TensorProto, helper

from adapters.tfserving import TfServingAdapter
from protos.tensorflow.core.framework import types_pb2
from protos.tensorflow_serving.apis import model_pb2, predict_pb2, prediction_service_pb2_grpc
from tests.onnx_models import demo_bytes
from tests.servers.tfserving_standin import (
    Received,
    StartStandIn,
    TfServingStandIn,
    canary_answer,
    dead_address,
    decode_tensor,
    encode_tensor,
    max_time_remaining,
    stable_answer,
    tfserving_config,
)
from tests.waiting import wait_until

pytest_plugins = ["tests.servers.fixtures"]

ROWS = [[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.0, 2.0]]
MakeClient = Callable[..., object]


def v2_body(rows: list[list[float]]) -> dict[str, object]:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [len(rows), 4],
                        "data": [v for row in rows for v in row]}]}


async def gateway_for(make_client: MakeClient, *endpoints: str, server: str = "") -> TestClient:
    return await make_client(tfserving_config(*endpoints), server=server)  # type: ignore[operator, no-any-return]


@pytest.fixture
async def client(make_client: MakeClient, standin: TfServingStandIn) -> TestClient:
    """A gateway whose `tfdemo` and `tfmulti` live on the stand-in."""
    return await gateway_for(make_client, standin.address)


def adapter_of(client: TestClient) -> TfServingAdapter:
    adapter = client.gateway.adapters["tf"]  # type: ignore[attr-defined]
    assert isinstance(adapter, TfServingAdapter)
    return adapter


def last_predict(standin: TfServingStandIn) -> Received:
    predicts = standin.calls("Predict")
    assert predicts, "the stand-in received no Predict"
    return predicts[-1]


# transcoding


async def test_row_format_becomes_a_grpc_predict_answered_with_the_backends_numbers(
        client: TestClient, standin: TfServingStandIn) -> None:
    reply = await client.post("/v1/models/tfdemo:predict", json={"instances": ROWS})
    assert reply.status == 200, await reply.text()
    np.testing.assert_allclose((await reply.json())["predictions"], canary_answer(ROWS),
                               rtol=1e-6)
    sent = last_predict(standin).request
    assert sent.model_spec.name == "tfdemo"
    assert sent.model_spec.WhichOneof("version_choice") is None  # latest
    x = sent.inputs["x"]
    assert x.dtype == types_pb2.DT_FLOAT
    assert [d.size for d in x.tensor_shape.dim] == [2, 4]
    assert x.tensor_content == np.asarray(ROWS, "<f4").tobytes()  # numeric: tensor_content
    assert not x.float_val


async def test_json_ints_are_sent_with_the_dtypes_of_the_signature(
        client: TestClient, standin: TfServingStandIn) -> None:
    reply = await client.post("/v1/models/tfmulti:predict",
                              json={"instances": [{"a": [1, 2], "b": [3], "s": "x"}]})
    assert reply.status == 200, await reply.text()
    assert (await reply.json())["predictions"][0]["sum"] == [4.0, 5.0]
    inputs = last_predict(standin).request.inputs
    assert inputs["a"].dtype == types_pb2.DT_FLOAT  # JSON ints, float in the signature
    assert inputs["a"].tensor_content == np.asarray([[1, 2]], "<f4").tobytes()
    assert inputs["b"].dtype == types_pb2.DT_INT64
    assert inputs["b"].tensor_content == np.asarray([[3]], "<i8").tobytes()
    assert inputs["s"].dtype == types_pb2.DT_STRING
    assert list(inputs["s"].string_val) == [b"x"]


async def test_columnar_b64_travels_as_string_val_and_bytes_outputs_come_back_as_b64(
        client: TestClient, standin: TfServingStandIn) -> None:
    text = "ü€".encode()
    reply = await client.post("/v1/models/tfmulti:predict", json={"inputs": {
        "a": [[1.5, 1.0], [0.0, 0.0]], "b": [[2], [-1]],
        "s": [{"b64": base64.b64encode(text).decode()}, "plain"]}})
    assert reply.status == 200, await reply.text()
    outputs = (await reply.json())["outputs"]
    assert outputs["sum"] == [[3.5, 3.0], [-1.0, -1.0]]
    assert [base64.b64decode(o["b64"]) for o in outputs["s_bytes"]] == [text, b"plain"]
    s = last_predict(standin).request.inputs["s"]
    assert s.dtype == types_pb2.DT_STRING and list(s.string_val) == [text, b"plain"]
    assert [d.size for d in s.tensor_shape.dim] == [2]


@pytest.mark.parametrize("encoding", ["fields", "content"])
async def test_backend_outputs_are_read_from_typed_fields_or_tensor_content(
        make_client: MakeClient, start_standin: StartStandIn, encoding: str) -> None:
    standin = await start_standin(response_encoding=encoding)
    client = await gateway_for(make_client, standin.address)
    reply = await client.post("/v1/models/tfdemo/labels/stable:predict", json={"inputs": ROWS})
    assert reply.status == 200, await reply.text()
    np.testing.assert_allclose((await reply.json())["outputs"], stable_answer(ROWS), rtol=1e-6)


async def test_v2_rest_infer_reaches_the_tf_backend(client: TestClient,
                                                    standin: TfServingStandIn) -> None:
    reply = await client.post("/v2/models/tfdemo/versions/1/infer", json=v2_body(ROWS))
    assert reply.status == 200, await reply.text()
    document = await reply.json()
    assert document["model_name"] == "tfdemo" and document["model_version"] == "1"
    [output] = document["outputs"]
    assert output["name"] == "probabilities" and output["shape"] == [2, 3]
    np.testing.assert_allclose(np.reshape(output["data"], (2, 3)), stable_answer(ROWS),
                               rtol=1e-6)
    sent = last_predict(standin).request
    assert sent.model_spec.version.value == 1
    np.testing.assert_array_equal(decode_tensor(sent.inputs["x"]), np.float32(ROWS))
    assert not standin.calls("GetModelMetadata")  # v2 JSON carries dtypes: no signature needed


@pytest.mark.parametrize(("path", "choice", "value", "answer"), [
    ("/v1/models/tfdemo:predict", None, None, canary_answer),
    ("/v1/models/tfdemo/versions/1:predict", "version", 1, stable_answer),
    ("/v1/models/tfdemo/versions/2:predict", "version", 2, canary_answer),
    ("/v1/models/tfdemo/labels/stable:predict", "version_label", "stable", stable_answer),
    ("/v1/models/tfdemo/labels/canary:predict", "version_label", "canary", canary_answer),
])
async def test_version_and_label_are_passed_through(
        client: TestClient, standin: TfServingStandIn, path: str, choice: str | None,
        value: object, answer: Callable[[list[list[float]]], np.ndarray]) -> None:
    reply = await client.post(path, json={"instances": ROWS})
    assert reply.status == 200, await reply.text()
    np.testing.assert_allclose((await reply.json())["predictions"], answer(ROWS), rtol=1e-6)
    [metadata] = standin.calls("GetModelMetadata")
    for spec in (metadata.request.model_spec, last_predict(standin).request.model_spec):
        assert spec.WhichOneof("version_choice") == choice
        if choice == "version":
            assert spec.version.value == value
        elif choice == "version_label":
            assert spec.version_label == value


# status and metadata


async def test_status_is_answered_by_the_backend(client: TestClient,
                                                 standin: TfServingStandIn) -> None:
    reply = await client.get("/v1/models/tfdemo")
    assert reply.status == 200
    assert [(s["version"], s["state"]) for s in (await reply.json())["model_version_status"]] \
        == [("1", "AVAILABLE"), ("2", "AVAILABLE")]
    standin.retire("tfdemo", 1)
    reply = await client.get("/v1/models/tfdemo")
    assert [(s["version"], s["state"]) for s in (await reply.json())["model_version_status"]] \
        == [("1", "END"), ("2", "AVAILABLE")]
    reply = await client.get("/v1/models/tfdemo/labels/canary")
    assert [s["version"] for s in (await reply.json())["model_version_status"]] == ["2"]
    assert standin.calls("GetModelStatus")[-1].request.model_spec.version_label == "canary"
    assert (await client.get("/v2/models/tfdemo/ready")).status == 200


async def test_metadata_is_answered_by_the_backend(client: TestClient,
                                                   standin: TfServingStandIn) -> None:
    document = await (await client.get("/v1/models/tfdemo/metadata")).json()
    assert document["model_spec"]["version"] == "2"
    signature = document["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["x"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in signature["inputs"]["x"]["tensor_shape"]["dim"]] == ["-1", "4"]
    assert list(signature["outputs"]) == ["cut"]  # v2's output
    document = await (await client.get("/v1/models/tfdemo/versions/1/metadata")).json()
    signature = document["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert list(signature["outputs"]) == ["probabilities"]  # v1's output
    v2 = await (await client.get("/v2/models/tfmulti")).json()
    assert v2 == {
        "name": "tfmulti", "versions": ["1"], "platform": "tensorflow_serving",
        "inputs": [{"name": "a", "datatype": "FP32", "shape": [-1, 2]},
                   {"name": "b", "datatype": "INT64", "shape": [-1, 1]},
                   {"name": "s", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "s_bytes", "datatype": "BYTES", "shape": [-1]},
                    {"name": "sum", "datatype": "FP32", "shape": [-1, 2]}]}
    assert len(standin.calls("GetModelMetadata")) == 3


async def test_signature_is_fetched_once_for_many_predicts(client: TestClient,
                                                           standin: TfServingStandIn) -> None:
    for _ in range(5):
        reply = await client.post("/v1/models/tfdemo:predict", json={"instances": ROWS})
        assert reply.status == 200
    assert len(standin.calls("Predict")) == 5
    assert len(standin.calls("GetModelMetadata")) == 1


async def test_signature_is_fetched_again_when_the_served_version_changes(
        client: TestClient, standin: TfServingStandIn) -> None:
    assert (await client.post("/v1/models/tfdemo:predict", json={"instances": ROWS})).status \
        == 200
    standin.serve("tfdemo", 3, demo_bytes())  # TF Serving picks up a new version
    for _ in range(3):
        reply = await client.post("/v1/models/tfdemo:predict", json={"instances": ROWS})
        assert reply.status == 200
        np.testing.assert_allclose((await reply.json())["predictions"], stable_answer(ROWS),
                                   rtol=1e-6)
    # the first reply from version 3 dropped the cached v2 signature: fetched once more
    assert len(standin.calls("GetModelMetadata")) == 2
    metadata = await (await client.get("/v1/models/tfdemo/metadata")).json()
    assert metadata["model_spec"]["version"] == "3"
    assert len(standin.calls("GetModelMetadata")) == 2  # answered from the cache


async def test_each_label_keeps_its_cached_signature(client: TestClient,
                                                     standin: TfServingStandIn) -> None:
    for _ in range(3):
        for label in ("stable", "canary"):
            reply = await client.post(f"/v1/models/tfdemo/labels/{label}:predict",
                                      json={"instances": ROWS})
            assert reply.status == 200
    assert len(standin.calls("Predict")) == 6
    assert [r.request.model_spec.version_label for r in standin.calls("GetModelMetadata")] \
        == ["stable", "canary"]


def double_input_model() -> bytes:
    """`x` float64 [-1, 4] -> `y` float64 [-1, 4] (x + x): a new version whose input dtype
    differs from v1/v2's."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])], "double",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [None, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


async def test_a_signature_changed_by_a_new_version_is_refetched_after_one_refusal(
        client: TestClient, standin: TfServingStandIn) -> None:
    assert (await client.post("/v1/models/tfdemo:predict", json={"instances": ROWS})).status \
        == 200
    standin.serve("tfdemo", 3, double_input_model())
    # typed with the cached signature (float), refused by the backend, which now wants double
    refused = await client.post("/v1/models/tfdemo:predict", json={"instances": ROWS})
    assert refused.status == 400
    assert "DT_DOUBLE but DT_FLOAT" in (await refused.json())["error"]
    reply = await client.post("/v1/models/tfdemo:predict", json={"instances": ROWS})
    assert reply.status == 200, await reply.text()
    assert (await reply.json())["predictions"] == (2 * np.asarray(ROWS)).tolist()
    assert last_predict(standin).request.inputs["x"].dtype == types_pb2.DT_DOUBLE
    assert len(standin.calls("GetModelMetadata")) == 2


# deadlines


async def test_the_remaining_deadline_is_sent_as_the_grpc_timeout(
        make_client: MakeClient, standin: TfServingStandIn) -> None:
    client = await gateway_for(make_client, standin.address, server="request_timeout_ms = 4000")
    reply = await client.post("/v1/models/tfdemo:predict", json={"instances": ROWS},
                              headers={"X-Request-Timeout-Ms": "2500"})
    assert reply.status == 200
    remaining = last_predict(standin).time_remaining
    assert remaining is not None and 0 < remaining <= max_time_remaining(2.5)
    reply = await client.post("/v2/models/tfdemo/infer", json=v2_body(ROWS))
    assert reply.status == 200
    remaining = last_predict(standin).time_remaining
    assert remaining is not None and max_time_remaining(2.5) < remaining <= max_time_remaining(4.0)


async def test_a_deadline_that_passes_while_the_backend_works_is_504(
        client: TestClient, standin: TfServingStandIn) -> None:
    standin.pause()
    reply = await client.post("/v2/models/tfdemo/infer", json=v2_body(ROWS),
                              headers={"X-Request-Timeout-Ms": "50"})
    assert reply.status == 504
    assert "deadline" in (await reply.json())["error"]
    standin.resume()
    assert (await client.post("/v2/models/tfdemo/infer", json=v2_body(ROWS))).status == 200


async def test_fetching_the_signature_counts_against_the_deadline(
        client: TestClient, standin: TfServingStandIn) -> None:
    standin.pause("GetModelMetadata")
    started = time.monotonic()
    reply = await client.post("/v1/models/tfdemo:predict", json={"instances": ROWS},
                              headers={"X-Request-Timeout-Ms": "100"})
    elapsed = time.monotonic() - started
    assert reply.status == 504
    assert "deadline of 100 ms" in (await reply.json())["error"]
    assert elapsed < 1.0  # not the adapter's own 5 s metadata timeout
    assert not standin.calls("Predict")
    standin.resume()


# endpoints: balancing, retry, failures


async def test_concurrent_requests_balance_by_least_outstanding(
        make_client: MakeClient, standin_pair: tuple[TfServingStandIn, TfServingStandIn]
        ) -> None:
    first, second = standin_pair
    client = await gateway_for(make_client, first.address, second.address)
    first.pause()
    second.pause()
    requests = [asyncio.ensure_future(client.post("/v2/models/tfdemo/infer", json=v2_body(ROWS)))
                for _ in range(6)]
    await wait_until(lambda: first.waiting + second.waiting == 6)
    assert (first.waiting, second.waiting) == (3, 3)
    first.resume()
    second.resume()
    assert [r.status for r in await asyncio.gather(*requests)] == [200] * 6


async def test_a_busy_endpoint_gets_no_new_requests_while_another_is_idle(
        make_client: MakeClient, standin_pair: tuple[TfServingStandIn, TfServingStandIn]
        ) -> None:
    client = await gateway_for(make_client, *(s.address for s in standin_pair))
    for standin in standin_pair:
        standin.pause()
    held = asyncio.ensure_future(client.post("/v2/models/tfdemo/infer", json=v2_body(ROWS)))
    await wait_until(lambda: sum(s.waiting for s in standin_pair) == 1)
    busy, idle = sorted(standin_pair, key=lambda s: -s.waiting)  # whichever the call went to
    idle.resume()
    for _ in range(4):  # round robin would send two of these to the busy endpoint
        assert (await client.post("/v2/models/tfdemo/infer", json=v2_body(ROWS))).status == 200
    assert (len(busy.calls("Predict")), len(idle.calls("Predict"))) == (1, 4)
    busy.resume()
    assert (await held).status == 200


async def test_a_dead_endpoint_is_retried_once_on_another(
        make_client: MakeClient, standin: TfServingStandIn) -> None:
    client = await gateway_for(make_client, dead_address(), standin.address)
    for _ in range(3):
        reply = await client.post("/v1/models/tfdemo:predict", json={"instances": ROWS})
        assert reply.status == 200, await reply.text()
    assert len(standin.calls("Predict")) == 3
    # every attempt was accounted for: nothing is left outstanding on either endpoint
    assert [e.outstanding for e in adapter_of(client).pool.endpoints] == [0, 0]


async def test_a_hung_endpoint_fails_over_after_the_connect_timeout(
        make_client: MakeClient, standin: TfServingStandIn, hung_address: str) -> None:
    client = await make_client(tfserving_config(  # type: ignore[operator]
        hung_address, standin.address, connect_timeout_s=0.2))
    started = time.monotonic()
    reply = await client.post("/v2/models/tfdemo/infer", json=v2_body(ROWS),
                              headers={"X-Request-Timeout-Ms": "10000"})
    assert reply.status == 200, await reply.text()
    assert time.monotonic() - started < 5  # not gRPC's default 20 s connect timeout
    assert len(standin.calls("Predict")) == 1


async def test_an_unavailable_reply_is_retried_on_the_other_endpoint_but_errors_are_not(
        make_client: MakeClient, standin_pair: tuple[TfServingStandIn, TfServingStandIn]
        ) -> None:
    first, second = standin_pair
    client = await gateway_for(make_client, first.address, second.address)
    first.fail_next("Predict", grpc.StatusCode.UNAVAILABLE, "overloaded")
    sent = 0
    while not first.calls("Predict"):  # until one lands on the first endpoint first
        assert (await client.post("/v2/models/tfdemo/infer", json=v2_body(ROWS))).status == 200
        sent += 1
    assert (len(first.calls("Predict")), len(second.calls("Predict"))) == (1, sent)
    assert [e.outstanding for e in adapter_of(client).pool.endpoints] == [0, 0]
    # a request the backend refuses is not the endpoint's fault: not retried
    bad = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}
    assert (await client.post("/v2/models/tfdemo/infer", json=bad)).status == 400
    assert len(first.calls("Predict")) + len(second.calls("Predict")) == 1 + sent + 1


async def test_every_endpoint_dead_is_503(make_client: MakeClient) -> None:
    client = await gateway_for(make_client, dead_address(), dead_address())
    reply = await client.post("/v2/models/tfdemo/infer", json=v2_body(ROWS))
    assert reply.status == 503
    assert reply.headers["Retry-After"] == "1"
    error = (await reply.json())["error"]
    assert error.startswith("the model's backend is unavailable")
    assert "tf" not in error.split() and "127.0.0.1" not in error  # internal names: logged


async def test_a_stopped_backend_is_a_clear_503_and_the_local_model_still_serves(
        client: TestClient, standin: TfServingStandIn) -> None:
    assert (await client.post("/v1/models/tfdemo:predict", json={"instances": ROWS})).status \
        == 200
    await standin.stop()
    for path, body in (("/v1/models/tfdemo:predict", {"instances": ROWS}),
                       ("/v2/models/tfdemo/infer", v2_body(ROWS))):
        reply = await client.post(path, json=body)
        assert reply.status == 503
        assert reply.content_type == "application/json"
        error = (await reply.json())["error"]
        assert error == "the model's backend is unavailable"  # name, address, gRPC text: logged
    local = await client.post("/v1/models/demo:predict", json={"instances": ROWS})
    assert local.status == 200
    np.testing.assert_allclose((await local.json())["predictions"], stable_answer(ROWS),
                               rtol=1e-5)
    # a remote backend down keeps the replica in rotation (it serves demo); per model, not
    readyz = await client.get("/readyz")
    assert readyz.status == 200
    verbose = await (await client.get("/readyz?verbose")).json()
    assert verbose["backends"]["local"]["models"]["demo"] == {"ready": True}
    assert verbose["backends"]["tf"]["models"]["tfdemo"]["ready"] is False
    assert (await client.get("/v2/models/tfdemo/ready")).status == 503


@pytest.mark.parametrize(("method", "path", "body", "status", "fragment"), [
    ("POST", "/v1/models/tfdemo/versions/9:predict", {"instances": ROWS}, 404,
     "Servable not found for request: Specific(tfdemo, 9)"),
    ("GET", "/v1/models/tfdemo/versions/9", None, 404, "Could not find version 9"),
    ("POST", "/v2/models/tfdemo/versions/9/infer", v2_body(ROWS), 404, "Servable not found"),
    ("POST", "/v1/models/ghost:predict", {"instances": ROWS}, 404,
     "Servable not found for request: Latest(ghost)"),
    ("POST", "/v2/models/tfdemo/infer",
     {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}, 400,
     "backend: "),
    ("POST", "/v2/models/tfdemo/infer",
     {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 4], "data": [1, 2, 3, 4]}]},
     400, "Expects arg[0] to be DT_FLOAT but DT_DOUBLE is provided"),
    ("POST", "/v1/models/tfdemo/labels/beta:predict", {"instances": ROWS}, 400,
     "Unrecognized servable version label: beta"),
])
async def test_backend_errors_keep_their_meaning(
        make_client: MakeClient, standin: TfServingStandIn, method: str, path: str,
        body: object, status: int, fragment: str) -> None:
    client = await make_client(tfserving_config(standin.address,
                                                models=("tfdemo", "ghost")))  # type: ignore[operator]
    reply = await client.request(method, path, json=body)
    assert reply.status == status
    assert reply.content_type == "application/json"
    assert fragment in (await reply.json())["error"]


# the stand-in itself answers like TF Serving (what the tests above rely on)


async def test_the_standin_reads_typed_values_like_tensorflow(standin: TfServingStandIn) -> None:
    async with grpc.aio.insecure_channel(standin.address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name="tfmulti"))
        request.inputs["a"].CopyFrom(encode_tensor(np.float32([[1, 2], [3, 4]]), content=False))
        b = request.inputs["b"]  # TF pads a short *_val with its last value
        b.dtype = types_pb2.DT_INT64
        b.tensor_shape.dim.add(size=2)
        b.tensor_shape.dim.add(size=1)
        b.int64_val.append(10)
        request.inputs["s"].CopyFrom(encode_tensor(np.array([b"p", b"q"], object),
                                                   content=False))
        reply = await stub.Predict(request, timeout=10)
        assert reply.outputs["sum"].float_val  # TF Serving's default: typed fields
        np.testing.assert_array_equal(decode_tensor(reply.outputs["sum"]), [[11, 12], [13, 14]])
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Predict(predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name="nope")), timeout=10)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
