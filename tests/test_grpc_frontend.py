"""The gRPC front doors over a real grpc.aio channel to the gateway's gRPC server on a free
port: TF Serving's PredictionService and ModelService, the Open Inference Protocol v2
GRPCInferenceService, status codes, deadlines, reflection and health; and `gateway serve` as a
process: both front doors up within a second, TensorFlow never imported."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import gateway
from protos.inference import grpc_service_pb2 as pb
from protos.inference import grpc_service_pb2_grpc
from protos.tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from protos.tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    predict_pb2,
)
from tests.servers.running_gateway import RunningGateway, StartGateway
from tests.servers.tfserving_standin import (
    TfServingStandIn,
    canary_answer,
    decode_tensor,
    max_time_remaining,
    stable_answer,
)
from tests.waiting import wait_until

pytest_plugins = ["tests.servers.fixtures"]

ROOT = Path(__file__).resolve().parent.parent
ROWS = [[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.0, 2.0]]
SERVICES = {"tensorflow.serving.PredictionService", "tensorflow.serving.ModelService",
            "inference.GRPCInferenceService", "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection"}
SLOW_MODEL = """
[models.slow]
adapter = "local"

[models.slow.batching]
max_batch_size = 1
max_queue_size = 1
"""


# helpers: requests built and replies read without the gateway's codecs


def tensor(array: np.ndarray, dtype: int) -> tensor_pb2.TensorProto:
    return tensor_pb2.TensorProto(
        dtype=dtype, tensor_content=array.astype(array.dtype.newbyteorder("<")).tobytes(),
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in array.shape]))


def predict_request(model: str, rows: list[list[float]], *, version: int | None = None,
                    label: str | None = None) -> predict_pb2.PredictRequest:
    spec = model_pb2.ModelSpec(name=model)
    if version is not None:
        spec.version.value = version
    if label is not None:
        spec.version_label = label
    request = predict_pb2.PredictRequest(model_spec=spec)
    request.inputs["x"].CopyFrom(tensor(np.asarray(rows, np.float32), types_pb2.DT_FLOAT))
    return request


def infer_request(model: str, rows: list[list[float]], **fields: str
                  ) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, **fields)
    x = request.inputs.add(name="x", datatype="FP32", shape=[len(rows), len(rows[0])])
    x.contents.fp32_contents.extend(v for row in rows for v in row)
    return request


def length_prefixed(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def parse_length_prefixed(raw: bytes) -> list[bytes]:
    items, offset = [], 0
    while offset < len(raw):
        (length,) = struct.unpack_from("<I", raw, offset)
        items.append(raw[offset + 4:offset + 4 + length])
        offset += 4 + length
    return items


def raw_outputs(reply: pb.ModelInferResponse) -> dict[str, np.ndarray | list[bytes]]:
    numpy = {"FP32": "<f4", "INT64": "<i8"}
    outputs: dict[str, np.ndarray | list[bytes]] = {}
    for spec, raw in zip(reply.outputs, reply.raw_output_contents, strict=True):
        if spec.datatype == "BYTES":
            outputs[spec.name] = parse_length_prefixed(raw)
        else:
            outputs[spec.name] = np.frombuffer(raw, numpy[spec.datatype]).reshape(spec.shape)
    return outputs


async def failure(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


# TF Serving's PredictionService and ModelService


async def test_predict_on_demo_gives_the_numbers_rest_gives(gw: RunningGateway) -> None:
    reply = await gw.predict.Predict(predict_request("demo", ROWS), timeout=10)
    assert reply.model_spec.name == "demo"
    assert reply.model_spec.version.value == 1
    assert reply.model_spec.signature_name == "serving_default"
    assert list(reply.outputs) == ["probabilities"]
    assert reply.outputs["probabilities"].tensor_content  # the fast path, no typed values
    probabilities = decode_tensor(reply.outputs["probabilities"])
    assert probabilities.dtype == np.float32 and probabilities.shape == (2, 3)
    rest = await gw.http.post("/v1/models/demo:predict", json={"instances": ROWS})
    np.testing.assert_array_equal(probabilities,
                                  np.asarray((await rest.json())["predictions"], np.float32))
    np.testing.assert_allclose(probabilities, stable_answer(ROWS), rtol=1e-5)


async def test_predict_reads_typed_values_and_fills_a_shape_from_one_value(
        gw: RunningGateway) -> None:
    request = predict_request("demo", ROWS)
    x = request.inputs["x"]
    x.ClearField("tensor_content")
    x.float_val.append(0.5)  # one value fills the whole [2, 4] tensor, as in TF
    reply = await gw.predict.Predict(request, timeout=10)
    np.testing.assert_allclose(decode_tensor(reply.outputs["probabilities"]),
                               stable_answer([[0.5] * 4] * 2), rtol=1e-5)


async def test_predict_by_version_and_label(gw: RunningGateway) -> None:
    for request in (predict_request("demo", ROWS, version=1),
                    predict_request("demo", ROWS, label="stable")):
        reply = await gw.predict.Predict(request, timeout=10)
        assert reply.model_spec.version.value == 1
    error = await failure(gw.predict.Predict(predict_request("demo", ROWS, version=7)))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "version 7" in (error.details() or "")
    error = await failure(gw.predict.Predict(predict_request("demo", ROWS, label="canary")))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "no label 'canary'" in (error.details() or "")


async def test_predict_output_filter_and_strings(gw: RunningGateway) -> None:
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name="multi"),
                                         output_filter=["s_bytes"])
    request.inputs["a"].CopyFrom(tensor(np.float32([[1, 2]]), types_pb2.DT_FLOAT))
    request.inputs["b"].CopyFrom(tensor(np.int64([[3]]), types_pb2.DT_INT64))
    s = request.inputs["s"]
    s.dtype = types_pb2.DT_STRING
    s.tensor_shape.dim.add(size=1)
    s.string_val.append("ü".encode())
    reply = await gw.predict.Predict(request, timeout=10)
    assert list(reply.outputs) == ["s_bytes"]
    assert reply.outputs["s_bytes"].dtype == types_pb2.DT_STRING
    assert list(reply.outputs["s_bytes"].string_val) == ["ü".encode()]


async def test_get_model_metadata_packs_the_signature_like_tf_serving(
        gw: RunningGateway) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=model_pb2.ModelSpec(name="demo"), metadata_field=["signature_def"])
    reply = await gw.predict.GetModelMetadata(request, timeout=10)
    assert reply.model_spec.name == "demo" and reply.model_spec.version.value == 1
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert reply.metadata["signature_def"].Unpack(signatures)
    signature = signatures.signature_def["serving_default"]
    assert signature.method_name == "tensorflow/serving/predict"
    x = signature.inputs["x"]
    assert x.dtype == types_pb2.DT_FLOAT and [d.size for d in x.tensor_shape.dim] == [-1, 4]
    probabilities = signature.outputs["probabilities"]
    assert [d.size for d in probabilities.tensor_shape.dim] == [-1, 3]
    request.metadata_field[:] = ["signature_def", "graph"]
    error = await failure(gw.predict.GetModelMetadata(request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "only 'signature_def'" in (error.details() or "")


async def test_get_model_status(gw: RunningGateway) -> None:
    reply = await gw.models.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(
        model_spec=model_pb2.ModelSpec(name="demo")), timeout=10)
    [status] = reply.model_version_status
    assert status.version == 1
    assert status.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert status.status.error_code == 0 and status.status.error_message == ""
    error = await failure(gw.models.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(
        model_spec=model_pb2.ModelSpec(name="nope"))))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "model 'nope' not found" in (error.details() or "")


async def test_classify_is_invalid_argument(gw: RunningGateway) -> None:
    error = await failure(gw.predict.Classify(classification_pb2.ClassificationRequest(
        model_spec=model_pb2.ModelSpec(name="demo"))))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no classify signature" in (error.details() or "")


async def test_tf_serving_grpc_reaches_the_tf_serving_backend(
        gw: RunningGateway, standin: TfServingStandIn) -> None:
    reply = await gw.predict.Predict(predict_request("tfdemo", ROWS, label="stable"),
                                     timeout=10)
    assert reply.model_spec.name == "tfdemo" and reply.model_spec.version.value == 1
    np.testing.assert_allclose(decode_tensor(reply.outputs["probabilities"]),
                               stable_answer(ROWS), rtol=1e-6)
    [sent] = standin.calls("Predict")
    assert sent.request.model_spec.version_label == "stable"
    assert sent.request.inputs["x"].tensor_content == np.float32(ROWS).tobytes()
    status = await gw.models.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(
        model_spec=model_pb2.ModelSpec(name="tfdemo")), timeout=10)
    assert [s.version for s in status.model_version_status] == [1, 2]
    metadata = await gw.predict.GetModelMetadata(get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=model_pb2.ModelSpec(name="tfdemo"), metadata_field=["signature_def"]),
        timeout=10)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert metadata.metadata["signature_def"].Unpack(signatures)
    assert list(signatures.signature_def["serving_default"].outputs) == ["cut"]  # v2, latest
    assert standin.calls("GetModelMetadata")


async def test_the_clients_deadline_becomes_the_requests(
        gw: RunningGateway, standin: TfServingStandIn) -> None:
    await gw.predict.Predict(predict_request("tfdemo", ROWS), timeout=1.5)
    remaining = standin.calls("Predict")[-1].time_remaining
    assert remaining is not None and 0 < remaining <= max_time_remaining(1.5)
    await gw.v2.ModelInfer(infer_request("tfdemo", ROWS), timeout=1.5)
    remaining = standin.calls("Predict")[-1].time_remaining
    assert remaining is not None and 0 < remaining <= max_time_remaining(1.5)
    await gw.predict.Predict(predict_request("tfdemo", ROWS))  # no deadline: the configured
    remaining = standin.calls("Predict")[-1].time_remaining
    assert remaining is not None and max_time_remaining(1.5) < remaining <= max_time_remaining(30)


async def test_a_deadline_the_gateway_enforces_has_a_readable_message(
        start_gateway: StartGateway, standin: TfServingStandIn) -> None:
    gw = await start_gateway(server="request_timeout_ms = 100")
    standin.pause()
    error = await failure(gw.predict.Predict(predict_request("tfdemo", ROWS), timeout=10))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert re.search(r"deadline of \d+ ms exceeded waiting for the backend",
                     error.details() or ""), error.details()
    standin.resume()


async def test_a_one_millisecond_client_deadline_on_the_slow_model(gw: RunningGateway) -> None:
    request = pb.ModelInferRequest(model_name="slow")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 1024])
    request.raw_input_contents.append(np.full((1, 1024), 0.01, "<f4").tobytes())
    error = await failure(gw.v2.ModelInfer(request, timeout=0.001))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "deadline" in (error.details() or "").lower()
    reply = await gw.v2.ModelInfer(request, timeout=10)  # the gateway is unharmed
    assert raw_outputs(reply)["y"].shape == (1, 1024)  # type: ignore[union-attr]


# Open Inference Protocol v2


async def test_server_live_ready_and_metadata(gw: RunningGateway) -> None:
    assert (await gw.v2.ServerLive(pb.ServerLiveRequest(), timeout=10)).live
    assert (await gw.v2.ServerReady(pb.ServerReadyRequest(), timeout=10)).ready
    metadata = await gw.v2.ServerMetadata(pb.ServerMetadataRequest(), timeout=10)
    assert (metadata.name, metadata.version) == ("inference-gateway", gateway.__version__)


async def test_model_ready(gw: RunningGateway, standin: TfServingStandIn) -> None:
    assert (await gw.v2.ModelReady(pb.ModelReadyRequest(name="demo"), timeout=10)).ready
    assert (await gw.v2.ModelReady(pb.ModelReadyRequest(name="demo", version="1"))).ready
    assert (await gw.v2.ModelReady(pb.ModelReadyRequest(name="tfdemo"), timeout=10)).ready
    assert not (await gw.v2.ModelReady(pb.ModelReadyRequest(name="nope"), timeout=10)).ready
    standin.retire("tfdemo", 1)
    standin.retire("tfdemo", 2)
    assert not (await gw.v2.ModelReady(pb.ModelReadyRequest(name="tfdemo"), timeout=10)).ready


async def test_model_metadata(gw: RunningGateway) -> None:
    reply = await gw.v2.ModelMetadata(pb.ModelMetadataRequest(name="demo"), timeout=10)
    assert (reply.name, list(reply.versions), reply.platform) == \
        ("demo", ["1"], "onnxruntime_onnx")
    assert [(t.name, t.datatype, list(t.shape)) for t in reply.inputs] == \
        [("x", "FP32", [-1, 4])]
    assert [(t.name, t.datatype, list(t.shape)) for t in reply.outputs] == \
        [("probabilities", "FP32", [-1, 3])]
    reply = await gw.v2.ModelMetadata(pb.ModelMetadataRequest(name="tfmulti"), timeout=10)
    assert reply.platform == "tensorflow_serving"
    assert [(t.name, t.datatype) for t in reply.inputs] == \
        [("a", "FP32"), ("b", "INT64"), ("s", "BYTES")]
    error = await failure(gw.v2.ModelMetadata(pb.ModelMetadataRequest(name="nope")))
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_model_infer_with_typed_contents_gives_the_numbers_rest_gives(
        gw: RunningGateway) -> None:
    reply = await gw.v2.ModelInfer(infer_request("demo", ROWS, id="req-7"), timeout=10)
    assert (reply.model_name, reply.model_version, reply.id) == ("demo", "1", "req-7")
    [output] = reply.outputs
    assert (output.name, output.datatype, list(output.shape)) == ("probabilities", "FP32", [2, 3])
    assert not output.contents.fp32_contents  # outputs travel as raw_output_contents
    probabilities = raw_outputs(reply)["probabilities"]
    rest = await gw.http.post("/v2/models/demo/infer", json={"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [2, 4], "data": ROWS}]})
    [rest_output] = (await rest.json())["outputs"]
    np.testing.assert_array_equal(probabilities,
                                  np.float32(rest_output["data"]).reshape(2, 3))
    np.testing.assert_allclose(probabilities, stable_answer(ROWS), rtol=1e-5)


async def test_model_infer_with_raw_contents_including_length_prefixed_bytes(
        gw: RunningGateway) -> None:
    request = pb.ModelInferRequest(model_name="multi")
    request.inputs.add(name="a", datatype="FP32", shape=[2, 2])
    request.inputs.add(name="b", datatype="INT64", shape=[2, 1])
    request.inputs.add(name="s", datatype="BYTES", shape=[2])
    request.raw_input_contents.extend([
        np.float32([[1, 2], [0.5, 0.5]]).astype("<f4").tobytes(),
        np.int64([[3], [-1]]).astype("<i8").tobytes(),
        length_prefixed(["ü€".encode(), b""])])
    reply = await gw.v2.ModelInfer(request, timeout=10)
    outputs = raw_outputs(reply)
    np.testing.assert_array_equal(outputs["sum"], [[4, 5], [-0.5, -0.5]])
    assert outputs["s_bytes"] == ["ü€".encode(), b""]
    assert {o.name: o.datatype for o in reply.outputs} == {"sum": "FP32", "s_bytes": "BYTES"}


async def test_model_infer_returns_only_the_requested_outputs(gw: RunningGateway) -> None:
    request = pb.ModelInferRequest(model_name="multi")
    request.inputs.add(name="a", datatype="FP32", shape=[1, 2]).contents.fp32_contents.extend(
        [1, 1])
    request.inputs.add(name="b", datatype="INT64", shape=[1, 1]).contents.int64_contents.append(
        2)
    request.inputs.add(name="s", datatype="BYTES", shape=[1]).contents.bytes_contents.append(
        b"x")
    request.outputs.add(name="sum")
    reply = await gw.v2.ModelInfer(request, timeout=10)
    assert [o.name for o in reply.outputs] == ["sum"]
    np.testing.assert_array_equal(raw_outputs(reply)["sum"], [[3, 3]])


async def test_model_infer_reaches_the_tf_serving_backend(
        gw: RunningGateway, standin: TfServingStandIn) -> None:
    request = pb.ModelInferRequest(model_name="tfmulti")
    request.inputs.add(name="a", datatype="FP32", shape=[1, 2])
    request.inputs.add(name="b", datatype="INT64", shape=[1, 1])
    request.inputs.add(name="s", datatype="BYTES", shape=[1])
    request.raw_input_contents.extend([np.float32([[1, 2]]).tobytes(),
                                       np.int64([[5]]).tobytes(), length_prefixed([b"hi"])])
    reply = await gw.v2.ModelInfer(request, timeout=10)
    assert reply.model_version == "1"
    outputs = raw_outputs(reply)
    np.testing.assert_array_equal(outputs["sum"], [[6, 7]])
    assert outputs["s_bytes"] == [b"hi"]
    [sent] = standin.calls("Predict")
    assert {name: t.dtype for name, t in sent.request.inputs.items()} == {
        "a": types_pb2.DT_FLOAT, "b": types_pb2.DT_INT64, "s": types_pb2.DT_STRING}
    assert list(sent.request.inputs["s"].string_val) == [b"hi"]
    reply = await gw.v2.ModelInfer(infer_request("tfdemo", ROWS, model_version="2"), timeout=10)
    np.testing.assert_allclose(raw_outputs(reply)["cut"], canary_answer(ROWS), rtol=1e-6)


def _bad_requests() -> list[tuple[str, pb.ModelInferRequest, grpc.StatusCode, str]]:
    cases = []
    shape = infer_request("demo", [[1.0, 2.0, 3.0]])
    cases.append(("shape", shape, grpc.StatusCode.INVALID_ARGUMENT,
                  "input 'x': expected shape [-1, 4], got [1, 3]"))
    dtype = pb.ModelInferRequest(model_name="demo")
    dtype.inputs.add(name="x", datatype="INT32", shape=[1, 4]).contents.int_contents.extend(
        [1, 2, 3, 4])
    cases.append(("dtype", dtype, grpc.StatusCode.INVALID_ARGUMENT,
                  "input 'x': expected datatype FP32, got INT32"))
    unknown_type = pb.ModelInferRequest(model_name="demo")
    unknown_type.inputs.add(name="x", datatype="FP8", shape=[1, 4])
    cases.append(("datatype", unknown_type, grpc.StatusCode.INVALID_ARGUMENT,
                  "unknown datatype 'FP8'"))
    count = infer_request("demo", [[1.0, 2.0, 3.0, 4.0]])
    count.inputs[0].contents.fp32_contents.append(5)
    cases.append(("count", count, grpc.StatusCode.INVALID_ARGUMENT,
                  "5 values in contents, shape [1, 4] needs 4"))
    raw = pb.ModelInferRequest(model_name="demo")
    raw.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    raw.raw_input_contents.append(b"\0" * 12)
    cases.append(("raw length", raw, grpc.StatusCode.INVALID_ARGUMENT,
                  "12 raw bytes, shape [1, 4] of FP32 needs 16"))
    prefix = pb.ModelInferRequest(model_name="multi")
    prefix.inputs.add(name="s", datatype="BYTES", shape=[1])
    prefix.raw_input_contents.append(b"\x05\x00")
    cases.append(("bytes prefix", prefix, grpc.StatusCode.INVALID_ARGUMENT,
                  "truncated BYTES length prefix"))
    cases.append(("model", infer_request("nope", ROWS), grpc.StatusCode.NOT_FOUND,
                  "model 'nope' not found"))
    cases.append(("version", infer_request("demo", ROWS, model_version="9"),
                  grpc.StatusCode.NOT_FOUND, "version 9"))
    return cases


@pytest.mark.parametrize(("request_", "code", "fragment"),
                         [case[1:] for case in _bad_requests()],
                         ids=[case[0] for case in _bad_requests()])
async def test_model_infer_errors_have_status_codes_and_readable_details(
        gw: RunningGateway, request_: pb.ModelInferRequest, code: grpc.StatusCode,
        fragment: str) -> None:
    error = await failure(gw.v2.ModelInfer(request_, timeout=10))
    assert error.code() == code
    assert fragment in (error.details() or ""), error.details()


async def test_a_full_queue_is_unavailable_with_retry_after(
        start_gateway: StartGateway) -> None:
    gw = await start_gateway(SLOW_MODEL)
    request = pb.ModelInferRequest(model_name="slow")  # 8 rows: one call keeps it busy a while
    request.inputs.add(name="x", datatype="FP32", shape=[8, 1024])
    request.raw_input_contents.append(np.full((8, 1024), 0.01, "<f4").tobytes())
    calls = [gw.v2.ModelInfer(request, timeout=30) for _ in range(12)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert refused and len(refused) < len(results), results
    for error in refused:
        assert error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert "queue is full" in (error.details() or "")
        assert ("retry-after", "1") in tuple(error.trailing_metadata() or ())


# reflection and health


async def test_reflection_lists_the_services(gw: RunningGateway) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(gw.channel)
    requests = [reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(
                    file_containing_symbol="inference.GRPCInferenceService")]
    replies = [reply async for reply in stub.ServerReflectionInfo(iter(requests), timeout=10)]
    listed = {s.name for s in replies[0].list_services_response.service}
    assert listed == SERVICES
    assert replies[1].file_descriptor_response.file_descriptor_proto  # descriptors are served


async def test_health_reports_serving_and_a_remote_backend_down_leaves_it_serving(
        gw: RunningGateway, standin: TfServingStandIn) -> None:
    health = health_pb2_grpc.HealthStub(gw.channel)
    for service in ("", "tensorflow.serving.PredictionService", "inference.GRPCInferenceService"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
    error = await failure(health.Check(health_pb2.HealthCheckRequest(service="nope")))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    await standin.stop()  # a backend goes away: its models are not ready, the gateway is

    async def tfdemo_not_ready() -> bool:
        try:
            reply = await gw.v2.ModelReady(pb.ModelReadyRequest(name="tfdemo"), timeout=10)
        except grpc.aio.AioRpcError as exc:
            return exc.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[no-any-return]
        return not reply.ready

    await wait_until(tfdemo_not_ready, within=10)
    assert (await gw.v2.ModelReady(pb.ModelReadyRequest(name="demo"), timeout=10)).ready
    assert (await gw.v2.ServerReady(pb.ServerReadyRequest(), timeout=10)).ready
    reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


# `gateway serve` as a process


def test_serve_opens_both_front_doors() -> None:
    """`gateway serve` logs both ports, then serves over gRPC and stops cleanly on SIGTERM.
    (How long start-up takes is a figure for bench/, not a timed test.)"""
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(ROOT / "gateway.toml"),
         "--http-port", "0", "--grpc-port", "0"], stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        ports: dict[str, int] = {}
        for line in process.stderr:  # wait on the log lines, not on a timer
            match = re.search(r"listening on (http|grpc)://127\.0\.0\.1:(\d+)", line)
            if match:
                ports[match[1]] = int(match[2])
            if len(ports) == 2:
                break
        assert set(ports) == {"http", "grpc"}, "gateway did not report both ports"
        with grpc.insecure_channel(f"127.0.0.1:{ports['grpc']}") as channel:
            stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            ready_by = time.monotonic() + 30  # the doors open before the models have loaded
            while not stub.ModelReady(pb.ModelReadyRequest(name="demo"), timeout=10).ready:
                assert time.monotonic() < ready_by, "demo never became ready"
                time.sleep(0.01)
    finally:
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=15)
        assert process.returncode == 0, rest


_IMPORT_PROBE = textwrap.dedent("""
    import asyncio, dataclasses, importlib.abc, json, sys
    from pathlib import Path

    attempted = []

    class Recorder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0].startswith("tensorflow"):
                attempted.append(name)
            return None

    sys.meta_path.insert(0, Recorder())
    import gateway.app, gateway.cli
    from gateway.config import load_config

    async def main():
        config = load_config(Path(sys.argv[1]))
        config = dataclasses.replace(config, server=dataclasses.replace(config.server,
                                                                        grpc_port=0))
        built = gateway.app.Gateway(config)
        await built.start()
        server = built.grpc_server()
        await server.start()
        await server.stop()
        await built.close()

    asyncio.run(main())
    loaded = sorted(n for n in sys.modules if n.split(".")[0].startswith("tensorflow"))
    print(json.dumps({"attempted": attempted, "loaded": loaded,
                      "protos": "protos.tensorflow_serving.apis.predict_pb2" in sys.modules}))
""")


def test_the_gateway_process_never_imports_tensorflow() -> None:
    result = subprocess.run([sys.executable, "-c", _IMPORT_PROBE, str(ROOT / "gateway.toml")],
                            cwd=ROOT,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["protos"]  # the TF Serving protos were loaded: ours, not TensorFlow's
    assert report["attempted"] == [] and report["loaded"] == []
