"""A gateway under test with both front doors open: HTTP on aiohttp's test server and gRPC on a
free port, serving `demo` in-process and `tfdemo`/`tfmulti` from a TF Serving stand-in. The
`start_gateway` fixture (tests.servers.fixtures) starts them and stops them after the test."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
from aiohttp.test_utils import TestClient

from protos.inference import grpc_service_pb2_grpc
from protos.tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc


@dataclass
class RunningGateway:
    http: TestClient
    port: int  # gRPC
    channel: grpc.aio.Channel  # to the gRPC port

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def predict(self) -> prediction_service_pb2_grpc.PredictionServiceStub:
        return prediction_service_pb2_grpc.PredictionServiceStub(self.channel)

    @property
    def models(self) -> model_service_pb2_grpc.ModelServiceStub:
        return model_service_pb2_grpc.ModelServiceStub(self.channel)

    @property
    def v2(self) -> grpc_service_pb2_grpc.GRPCInferenceServiceStub:
        return grpc_service_pb2_grpc.GRPCInferenceServiceStub(self.channel)


#: The `start_gateway` fixture: `await start_gateway(extra_toml="", server="")`.
StartGateway = Callable[..., Awaitable[RunningGateway]]
