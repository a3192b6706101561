"""Our TorchServe protos (protos/torchserve) against TorchServe 0.12's inference.proto and
management.proto: field names and numbers, method paths and streaming kinds (tables typed from
upstream, not derived from our descriptors), bytes on the wire built by hand, and a real gRPC
server answering on the upstream paths. (tests/test_protos.py checks they are regenerated.)"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from google.protobuf import any_pb2, empty_pb2
from google.protobuf.message import Message

from protos.torchserve import inference_pb2 as inference
from protos.torchserve import inference_pb2_grpc as inference_grpc
from protos.torchserve import management_pb2 as management

INFERENCE = "org.pytorch.serve.grpc.inference"
MANAGEMENT = "org.pytorch.serve.grpc.management"

EXPECTED_FIELDS: dict[type[Message], dict[str, int]] = {
    inference.PredictionsRequest: {"model_name": 1, "model_version": 2, "input": 3,
                                   "sequence_id": 4},
    inference.PredictionResponse: {"prediction": 1, "sequence_id": 2, "status": 3},
    inference.RpcStatus: {"code": 1, "message": 2, "details": 3},  # google.rpc.Status
    inference.TorchServeHealthResponse: {"health": 1},
    management.ManagementResponse: {"msg": 1},
    management.DescribeModelRequest: {"model_name": 1, "model_version": 2, "customized": 3},
    management.ListModelsRequest: {"limit": 1, "next_page_token": 2},
}

# path -> (request type, response type, client streaming, server streaming)
EXPECTED_METHODS: dict[str, tuple[str, str, bool, bool]] = {
    f"/{INFERENCE}.InferenceAPIsService/Ping": (
        "google.protobuf.Empty", f"{INFERENCE}.TorchServeHealthResponse", False, False),
    f"/{INFERENCE}.InferenceAPIsService/Predictions": (
        f"{INFERENCE}.PredictionsRequest", f"{INFERENCE}.PredictionResponse", False, False),
    f"/{INFERENCE}.InferenceAPIsService/StreamPredictions": (
        f"{INFERENCE}.PredictionsRequest", f"{INFERENCE}.PredictionResponse", False, True),
    f"/{MANAGEMENT}.ManagementAPIsService/DescribeModel": (
        f"{MANAGEMENT}.DescribeModelRequest", f"{MANAGEMENT}.ManagementResponse", False, False),
    f"/{MANAGEMENT}.ManagementAPIsService/ListModels": (
        f"{MANAGEMENT}.ListModelsRequest", f"{MANAGEMENT}.ManagementResponse", False, False),
}


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def ld(field: int, payload: bytes) -> bytes:  # length-delimited
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def vint(field: int, value: int) -> bytes:
    return varint(field << 3) + varint(value)


@pytest.mark.parametrize("message_class", list(EXPECTED_FIELDS),
                         ids=lambda c: c.DESCRIPTOR.full_name)
def test_field_numbers_match_torchserve(message_class: type[Message]) -> None:
    actual = {f.name: f.number for f in message_class.DESCRIPTOR.fields}
    assert actual == EXPECTED_FIELDS[message_class]


def test_services_define_exactly_the_expected_methods() -> None:
    services = [inference.DESCRIPTOR.services_by_name["InferenceAPIsService"],
                management.DESCRIPTOR.services_by_name["ManagementAPIsService"]]
    actual = {f"/{s.full_name}/{m.name}": (m.input_type.full_name, m.output_type.full_name,
                                           m.client_streaming, m.server_streaming)
              for s in services for m in s.methods}
    assert actual == EXPECTED_METHODS


def test_predictions_wire_format() -> None:
    request = inference.PredictionsRequest(model_name="m", model_version="2.0",
                                           input={"data": b"{}"}, sequence_id="s")
    expected = ld(1, b"m") + ld(2, b"2.0") + ld(3, ld(1, b"data") + ld(2, b"{}")) + ld(4, b"s")
    assert request.SerializeToString(deterministic=True) == expected
    status = any_pb2.Any(type_url="type.googleapis.com/google.rpc.ErrorInfo", value=b"x")
    response = inference.PredictionResponse(
        prediction=b"out", status=inference.RpcStatus(code=13, message="boom", details=[status]))
    assert response.SerializeToString(deterministic=True) == ld(1, b"out") + ld(3, vint(
        1, 13) + ld(2, b"boom") + ld(3, ld(1, status.type_url.encode()) + ld(2, b"x")))
    assert not inference.PredictionsRequest(model_name="m").HasField("sequence_id")


def test_management_wire_format() -> None:
    describe = management.DescribeModelRequest(model_name="m", model_version="all",
                                               customized=True)
    assert describe.SerializeToString() == ld(1, b"m") + ld(2, b"all") + vint(3, 1)
    listing = management.ListModelsRequest(limit=1000, next_page_token=7)
    assert listing.SerializeToString() == vint(1, 1000) + vint(2, 7)


class Inference(inference_grpc.InferenceAPIsServiceServicer):
    def Predictions(self, request: inference.PredictionsRequest,
                    context: grpc.ServicerContext) -> inference.PredictionResponse:
        return inference.PredictionResponse(prediction=request.input["data"][::-1])

    def StreamPredictions(self, request: inference.PredictionsRequest,
                          context: grpc.ServicerContext) -> Iterator[inference.PredictionResponse]:
        for part in request.input["data"].split(b","):
            yield inference.PredictionResponse(prediction=part)


@pytest.fixture
def channel() -> Iterator[grpc.Channel]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    inference_grpc.add_InferenceAPIsServiceServicer_to_server(Inference(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as chan:
            yield chan
    finally:
        server.stop(grace=None)


def test_a_server_answers_raw_bytes_on_the_torchserve_paths(channel: grpc.Channel) -> None:
    request = ld(1, b"m") + ld(3, ld(1, b"data") + ld(2, b"a,b"))
    unary: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
        f"/{INFERENCE}.InferenceAPIsService/Predictions")
    assert unary(request, timeout=10) == ld(1, b"b,a")
    stream: grpc.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(
        f"/{INFERENCE}.InferenceAPIsService/StreamPredictions")
    assert list(stream(request, timeout=10)) == [ld(1, b"a"), ld(1, b"b")]
    ping = inference_grpc.InferenceAPIsServiceStub(channel).Ping
    with pytest.raises(grpc.RpcError) as caught:
        ping(empty_pb2.Empty(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
