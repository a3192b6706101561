"""Every front door of a running gateway (HTTP and gRPC, the demo ONNX model in-process and a
TF Serving stand-in), driven with generated hostile requests under a small decode budget: no
5xx, no INTERNAL, no unhandled exception in the log. Then the attacks that once gave 500s or
cost far too much, one by one, with the status and the message each gets now.

Hypothesis runs in a worker thread (it cannot await); each case's request runs on the test's
event loop, where the gateway serves it.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from gateway import dtypes
from gateway.codecs import tensor_proto, v2_binary
from gateway.codecs.budget import DEFAULT_BUDGET
from protos.inference import grpc_service_pb2 as pb
from protos.tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from protos.tensorflow_serving.apis import predict_pb2
from tests.conftest import put_model
from tests.fuzz_support import (
    SMALL_BUDGET_TOML,
    TF_FORMS,
    Forge,
    counts,
    fuzz_settings,
    infer_requests,
    json_body,
    predict_requests,
    seeds,
    signature,
    spec,
    tf_json_document,
    v2_binary_bodies,
    v2_documents,
    v2_model_document,
)
from tests.log_support import errors_logged
from tests.servers.running_gateway import RunningGateway, StartGateway
from tests.waiting import wait_until

pytest_plugins = ["tests.servers.fixtures"]

T = TypeVar("T")

#: The models the doors are fuzzed against, with their signatures (for well-formed requests).
DEMO = signature(spec("x", "FP32", -1, 4), name="demo")
MULTI = signature(spec("a", "FP32", -1, 2), spec("b", "INT64", -1, 1), spec("s", "BYTES", -1),
                  name="multi")
MODELS = {"demo": DEMO, "multi": MULTI, "tfdemo": DEMO, "tfmulti": MULTI}
# gRPC codes a client's bad request may get; INTERNAL, UNKNOWN, UNAVAILABLE... are failures.
CLIENT_CODES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED,
                grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION,
                grpc.StatusCode.OUT_OF_RANGE}


async def started(start_gateway: StartGateway, extra: str = SMALL_BUDGET_TOML
                  ) -> RunningGateway:
    gw = await start_gateway(extra)

    async def ready() -> bool:
        statuses = [await gw.http.get(f"/v2/models/{model}/ready") for model in MODELS]
        return all(response.status == 200 for response in statuses)

    await wait_until(ready, within=30)
    return gw


async def drive(cases: st.SearchStrategy[T], examples: int,
                send: Callable[[T], Coroutine[Any, Any, None]]) -> None:
    """Runs `send(case)` on this event loop for each generated case, Hypothesis driving from
    a worker thread (a failing case is shrunk and reported as usual)."""
    loop = asyncio.get_running_loop()

    @fuzz_settings(examples)
    @given(cases)
    def run(case: T) -> None:
        asyncio.run_coroutine_threadsafe(send(case), loop).result(timeout=60)

    await asyncio.to_thread(run)


def no_errors_logged(caplog: pytest.LogCaptureFixture) -> None:
    errors = errors_logged(caplog)
    assert not errors, [r.getMessage() for r in errors[:5]]


# --- REST -----------------------------------------------------------------------------------


JSON_TYPE = {"Content-Type": "application/json"}


@st.composite
def rest_cases(draw: st.DrawFn) -> tuple[str, bytes] | tuple[str, bytes, dict[str, str]]:
    """A path and body (JSON), or a path, body and headers (v2 with binary tensor data)."""
    forge = Forge(draw(seeds))
    model = draw(st.sampled_from(sorted(MODELS)))
    dialect = draw(st.sampled_from(["tfserving", "v2", "v2-binary", "torchserve",
                                    "management"]))
    names = [s.name for s in MODELS[model].inputs]
    if dialect == "tfserving":
        document = tf_json_document(forge, MODELS[model], draw(st.sampled_from(TF_FORMS)))
        return f"/v1/models/{model}:predict", json_body(forge, document)
    if dialect == "v2-binary":
        body, length = draw(v2_binary_bodies([MODELS[model]]))
        headers = {} if length is None else {v2_binary.HEADER_LENGTH: length}
        return f"/v2/models/{model}/infer", body, {"Content-Type": "application/octet-stream",
                                                   **headers}
    if dialect in ("v2", "management"):
        document = draw(v2_documents(names)) if forge.chance(0.4) else \
            v2_model_document(forge, MODELS[model]) if forge.chance(0.8) else {
                "inputs": {n: forge.tensor_value("f") for n in names}}
        path = f"/v2/models/{model}/infer" if dialect == "v2" else f"/models/{model}/predict"
        return path, json_body(forge, document)
    document = tf_json_document(forge, MODELS[model], "columnar-named")
    return f"/predictions/{model}", json_body(forge, document.get("inputs", document)
                                              if isinstance(document, dict) else document)


async def test_rest_doors_answer_every_bad_input_with_a_4xx(
        start_gateway: StartGateway, caplog: pytest.LogCaptureFixture) -> None:
    gw = await started(start_gateway)
    examples, seen = 1500, Counter[str]()

    async def send(case: tuple[str, bytes] | tuple[str, bytes, dict[str, str]]) -> None:
        path, body, headers = case if len(case) == 3 else (*case, JSON_TYPE)
        response = await gw.http.post(path, data=body, headers=headers)
        reply = await response.read()  # JSON, or JSON then binary tensor data
        assert response.status < 500, (path, body[:300], response.status, reply[:300])
        if response.status >= 400:  # TorchServe's dialect answers in TorchServe's shape
            shape = ({"code", "type", "message"} if path.startswith("/predictions/")
                     else {"error"})
            assert set(json.loads(reply)) == shape, reply
        seen[f"{path.split('/')[1]} {response.status}"] += 1

    await drive(rest_cases(), examples, send)
    assert sum(seen.values()) == examples, counts(seen)
    assert sum(n for key, n in seen.items() if key.endswith(" 200")) > examples // 20, \
        counts(seen)
    no_errors_logged(caplog)


# --- gRPC -----------------------------------------------------------------------------------


@st.composite
def grpc_cases(draw: st.DrawFn) -> tuple[str, Any]:
    model = draw(st.sampled_from(sorted(MODELS)))
    names = [s.name for s in MODELS[model].inputs]
    method = draw(st.sampled_from(["Predict", "ModelInfer"]))
    forge = Forge(draw(seeds))
    if forge.chance(0.35):  # the model's own inputs, well-formed (one batch size)
        rows = forge.r.randint(1, 16)
        arrays = {s.name: forge.array(s, forge.fitted(s, rows)) for s in MODELS[model].inputs}
        return method, (fitted_predict(model, arrays) if method == "Predict"
                        else fitted_infer(model, arrays))
    if method == "Predict":
        return method, draw(predict_requests(model, names))
    return method, draw(infer_requests(model, names))


def fitted_predict(model: str, arrays: dict[str, np.ndarray]) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    for name, array in arrays.items():
        request.inputs[name].CopyFrom(tensor_proto.from_array(array))
    return request


def fitted_infer(model: str, arrays: dict[str, np.ndarray]) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    for name, array in arrays.items():
        datatype = dtypes.of_array(array).v2
        request.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
        if datatype == "BYTES":
            request.raw_input_contents.append(b"".join(
                struct.pack("<I", len(item)) + item for item in array.reshape(-1)))
        else:
            request.raw_input_contents.append(array.tobytes())
    return request


async def test_grpc_doors_answer_every_bad_input_with_a_client_code(
        start_gateway: StartGateway, caplog: pytest.LogCaptureFixture) -> None:
    gw = await started(start_gateway)
    examples, seen = 1200, Counter[str]()

    async def send(case: tuple[str, Any]) -> None:
        method, request = case
        call = gw.predict.Predict if method == "Predict" else gw.v2.ModelInfer
        try:
            await call(request, timeout=30)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() in CLIENT_CODES, (method, request, exc.code(), exc.details())
            seen[f"{method} {exc.code().name}"] += 1
        else:
            seen[f"{method} OK"] += 1

    await drive(grpc_cases(), examples, send)
    assert sum(seen.values()) == examples, counts(seen)
    assert seen["Predict OK"] > examples // 20 and seen["ModelInfer OK"] > examples // 20, \
        counts(seen)
    no_errors_logged(caplog)


# --- the attacks, one by one ------------------------------------------------------------------


@pytest.fixture
async def gw_default(start_gateway: StartGateway) -> RunningGateway:
    """A gateway with the default decode budget."""
    return await started(start_gateway, "")


def tensor(dtype: int, dims: list[int], **fields: Any) -> tensor_pb2.TensorProto:
    return tensor_pb2.TensorProto(dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims]), **fields)


async def predict_error(gw: RunningGateway, proto: tensor_pb2.TensorProto,
                        model: str = "demo") -> grpc.aio.AioRpcError:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["x"].CopyFrom(proto)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.predict.Predict(request, timeout=10)
    return caught.value


async def test_one_float_val_broadcast_to_25m_rows_is_refused_before_it_is_built(
        gw_default: RunningGateway) -> None:
    proto = tensor(types_pb2.DT_FLOAT, [25_000_000, 4], float_val=[1.0])
    assert len(predict_pb2.PredictRequest(inputs={"x": proto}).SerializeToString()) < 40
    error = await predict_error(gw_default, proto)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.details() == ("tensor 'x' has 25000000x4 = 100000000 elements; the limit is "
                               "4194304 ([server.decode] max_tensor_elements)")


async def test_a_million_by_a_million_broadcast_is_refused(gw_default: RunningGateway) -> None:
    error = await predict_error(gw_default,
                                tensor(types_pb2.DT_FLOAT, [10**6, 10**6], float_val=[1.0]))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "1000000x1000000 = 1000000000000 elements" in error.details()


@pytest.mark.parametrize("dims", [[1] * 65, [1] * 33])
async def test_more_dims_than_the_budget_is_400_on_every_door(gw_default: RunningGateway,
                                                             dims: list[int]) -> None:
    message = f"tensor 'x' has {len(dims)} dimensions; the limit is 32 ([server.decode] max_dims)"
    error = await predict_error(gw_default, tensor(types_pb2.DT_FLOAT, dims, float_val=[1.0]))
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, message)
    request = pb.ModelInferRequest(model_name="demo")
    request.inputs.add(name="x", datatype="FP32", shape=dims).contents.fp32_contents.append(1)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw_default.v2.ModelInfer(request, timeout=10)
    assert (caught.value.code(), caught.value.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT, message)
    response = await gw_default.http.post("/v2/models/demo/infer", json={"inputs": [
        {"name": "x", "datatype": "FP32", "shape": dims, "data": [1.0]}]})
    assert response.status == 400
    assert message in (await response.json())["error"]


async def test_nesting_deeper_than_max_dims_is_400_before_recursing(
        gw_default: RunningGateway) -> None:
    for depth, dtype in ((900, "BYTES"), (900, "FP32"), (5000, "BYTES")):
        value = "[" * depth + ('"a"' if dtype == "BYTES" else "1.0") + "]" * depth
        body = (f'{{"inputs": [{{"name": "x", "datatype": "{dtype}", "shape": [1], '
                f'"data": {value}}}]}}')
        response = await gw_default.http.post("/v2/models/demo/infer", data=body)
        assert response.status == 400, await response.text()
        error = (await response.json())["error"]
        assert ("is nested more than 32 lists deep; the limit is 32 dimensions ([server.decode] "
                "max_dims)" in error) or "malformed JSON" in error


@pytest.mark.parametrize("shape", [[2**63 - 1], [0, 2**62], [2**63 - 1, 0]])
async def test_huge_dims_with_no_data_are_413_not_500(gw_default: RunningGateway,
                                                     shape: list[int]) -> None:
    request = pb.ModelInferRequest(model_name="demo")
    request.inputs.add(name="x", datatype="FP32", shape=shape)
    request.raw_input_contents.append(b"")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw_default.v2.ModelInfer(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "([server.decode] max_tensor_elements)" in caught.value.details()
    response = await gw_default.http.post("/v2/models/demo/infer", json={"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [2**63], "data": []}]})
    assert response.status == 413
    assert "([server.decode] max_tensor_elements)" in (await response.json())["error"]


async def test_lone_surrogates_are_400_before_inference(gw_default: RunningGateway) -> None:
    bodies = [
        '{"id": "\\ud800", "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], '
        '"data": [1, 2, 3, NaN]}]}',
        '{"id": "\\udfff", "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], '
        '"data": [1, 2, 3, 4]}]}',
        '{"inputs": [{"name": "s", "datatype": "BYTES", "shape": [1], "data": ["\\ud800"]}]}',
    ]
    for body in bodies:
        response = await gw_default.http.post("/v2/models/demo/infer", data=body)
        assert response.status == 400, await response.text()
        assert "lone surrogate" in (await response.json())["error"]


def rows_and_total_bytes() -> bytes:
    """Input `x` float32 [-1, 4]; outputs `rows` (x itself) and `total` (its column sums,
    [1, 4]): two outputs whose batch sizes differ unless x has one row."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["rows"]),
         helper.make_node("ReduceSum", ["x", "axes"], ["total"], keepdims=1)],
        "rows_and_total", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT, [None, 4]),
         helper.make_tensor_value_info("total", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.array([0], np.int64), "axes")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


async def test_tf_serving_row_reply_whose_outputs_differ_in_batch_size_is_400(
        start_gateway: StartGateway, repo: Path) -> None:
    put_model(repo, "twobatch", 1, rows_and_total_bytes())
    gw = await started(start_gateway, "")
    await wait_until(lambda: _ready(gw, "twobatch"), within=30)
    rows = [[1, 2, 3, 4], [5, 6, 7, 8]]
    response = await gw.http.post("/v1/models/twobatch:predict", json={"instances": rows})
    assert response.status == 400
    assert ("Tensor name: total has inconsistent batch size: 1 expecting: 2"
            in (await response.json())["error"])
    response = await gw.http.post("/v1/models/twobatch:predict", json={"inputs": rows})
    assert response.status == 200  # columnar: outputs may differ in batch size
    response = await gw.http.post("/v1/models/twobatch:predict", json={"instances": rows[:1]})
    assert response.status == 200


async def _ready(gw: RunningGateway, model: str) -> bool:
    return (await gw.http.get(f"/v2/models/{model}/ready")).status == 200


async def test_json_numbers_tf_serving_refuses_are_400(gw_default: RunningGateway) -> None:
    for rows, fragment in (("[[1e400, 0, 0, 0]]", "too large for a double"),
                           ("[[NaN, -1E+999, 0, 0]]", "too large for a double"),
                           ("[[true, 1, 2, 3]]", "booleans mixed with numbers"),
                           ("[[16777217, 0, 0, 0]]", "without loss of precision"),
                           ("[[3.5e38, 0, 0, 0]]", "out of range for FP32"),
                           ("[[1, 2, 3, null]]", "expected FP32 (numbers)")):
        response = await gw_default.http.post("/v1/models/demo:predict",
                                              data=f'{{"instances": {rows}}}')
        assert response.status == 400, (rows, await response.text())
        assert fragment in (await response.json())["error"]
    response = await gw_default.http.post(  # what TF Serving takes, we take
        "/v1/models/demo:predict", data='{"instances": [[NaN, Infinity, 16777215, 1e38]]}')
    assert response.status == 200, await response.text()


async def test_a_large_bytes_tensor_does_not_hold_the_event_loop(
        gw_default: RunningGateway) -> None:
    """As many BYTES elements of varied lengths as the budget allows decode in a worker
    thread: a probe on the loop keeps running every few ms meanwhile. The tensor is refused
    afterwards (`multi` takes strings of rank 1), which is not what this measures."""
    rows, cols = 64, DEFAULT_BUDGET.max_bytes_elements // 64
    lengths = np.random.default_rng(0).integers(0, 2, rows * cols)
    data = b"".join(struct.pack("<I", int(n)) + b"a" * int(n) for n in lengths)
    request = pb.ModelInferRequest(model_name="multi")
    request.inputs.add(name="s", datatype="BYTES", shape=[rows, cols])
    request.raw_input_contents.append(data)
    wire = request.SerializeToString()  # here, not on the loop the probe watches
    infer = gw_default.channel.unary_unary(
        "/inference.GRPCInferenceService/ModelInfer", request_serializer=None,
        response_deserializer=pb.ModelInferResponse.FromString)
    stalls: list[float] = []
    done = asyncio.Event()

    async def probe() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            stalls.append(now - last)
            last = now

    prober = asyncio.create_task(probe())
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await infer(wire, timeout=60)
    finally:
        done.set()
        await prober
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert max(stalls) < 0.1, f"the loop stalled {max(stalls) * 1000:.0f} ms"


async def test_inputs_that_differ_in_batch_size_are_400(gw_default: RunningGateway) -> None:
    """Found by the fuzz harness: they reached ONNX Runtime (502, with every request batched
    with them); the signature check refuses them now."""
    response = await gw_default.http.post("/v2/models/multi/infer", json={"inputs": [
        {"name": "a", "datatype": "FP32", "shape": [3, 2], "data": [0] * 6},
        {"name": "b", "datatype": "INT64", "shape": [2, 1], "data": [1, 2]},
        {"name": "s", "datatype": "BYTES", "shape": [3], "data": ["x", "y", "z"]}]})
    assert response.status == 400, await response.text()
    assert "differ in batch size" in await response.text()


async def test_every_door_decodes_with_the_configured_budget(
        start_gateway: StartGateway) -> None:
    gw = await started(start_gateway)  # [server.decode] max_tensor_elements = 64
    rows = [[0.5] * 5] * 16  # 80 elements (decoding comes before the signature's check)
    limit = "the limit is 64 ([server.decode] max_tensor_elements)"
    for path, body in (("/v1/models/demo:predict", {"instances": rows}),
                       ("/v1/models/tfdemo:predict", {"inputs": rows}),
                       ("/v2/models/demo/infer", {"inputs": [
                           {"name": "x", "datatype": "FP32", "shape": [16, 5],
                            "data": rows}]}),
                       ("/models/demo/predict", {"inputs": {"x": rows}}),
                       ("/predictions/demo", {"x": rows})):
        response = await gw.http.post(path, json=body)
        assert response.status == 413, (path, await response.text())
        assert limit in await response.text(), path
    array = np.full((16, 5), 0.5, np.float32)
    for call, request in ((gw.predict.Predict, fitted_predict("demo", {"x": array})),
                          (gw.v2.ModelInfer, fitted_infer("demo", {"x": array}))):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(request, timeout=10)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert limit in caught.value.details()
