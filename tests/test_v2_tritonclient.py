"""Triton's own Python clients (`tritonclient.http` and `tritonclient.grpc`, in .venv-clients)
against the gateway's v2 doors, for every datatype of the protocol: identity models served
in-process take each one's edge values and must give them back bit for bit, with the clients'
defaults (binary tensor data on HTTP, raw contents on gRPC) and with JSON (`binary_data=False`)
each way; request parameters reach the backend from both; server metadata lists the same
extensions on both; `ModelStreamInfer` answers every message of a stream, errors included."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from onnx import TensorProto

from gateway.types import InferRequest, InferResponse
from tests.conftest import put_model
from tests.onnx_models import identity_bytes
from tests.test_real_clients import run_client

#: The protocol's datatypes, as ONNX element types; all but BF16, which ONNX Runtime's Python
#: API cannot feed (tests/test_v2_binary.py covers it at the door).
DATATYPES = {
    "BOOL": TensorProto.BOOL, "UINT8": TensorProto.UINT8, "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32, "UINT64": TensorProto.UINT64, "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16, "INT32": TensorProto.INT32, "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16, "FP32": TensorProto.FLOAT, "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}
#: How the client sends (tests/clients/triton_client.py MODES), and whether the reply must carry
#: the output as binary data (HTTP) or raw contents (gRPC).
MODES = {"http_defaults": True, "http_binary_output": True, "http_json": False,
         "http_json_in_binary_out": True, "http_binary_in_json_out": False, "grpc": True,
         "grpc_output_named": True}


@dataclass
class Targets:
    http: str
    grpc: str
    #: The request parameters the backend was handed, by request id.
    parameters: dict[str | None, dict[str, Any]]


@pytest.fixture
async def targets(make_client: Callable[..., Any], repo: Path,
                  monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Targets]:
    """HTTP and gRPC targets of a gateway serving `id_<datatype>` identity models, recording
    the parameters its in-process backend is handed."""
    for datatype, element_type in DATATYPES.items():
        put_model(repo, f"id_{datatype.lower()}", 1, identity_bytes(element_type))
    http = await make_client(server="grpc_port = 0")
    adapter = http.gateway.adapters["local"]
    seen: dict[str | None, dict[str, Any]] = {}
    infer = adapter.infer

    async def recording(request: InferRequest) -> InferResponse:
        seen[request.id] = dict(request.parameters)
        return await infer(request)

    monkeypatch.setattr(adapter, "infer", recording)
    grpc_server = http.gateway.grpc_server()
    port = await grpc_server.start()
    yield Targets(f"127.0.0.1:{http.port}", f"127.0.0.1:{port}", seen)
    await grpc_server.stop()


async def test_every_datatype_round_trips(targets: Targets) -> None:
    report = await run_client("triton_client.py", "dtypes", targets.http, targets.grpc)
    wrong = {}
    for datatype in DATATYPES:
        for mode, binary in MODES.items():
            seen = report[datatype][mode]
            if "error" in seen or seen["got"] != seen["sent"] or \
                    seen["id"] != f"{datatype}-{mode}" or seen["binary_reply"] != binary:
                wrong[f"{datatype} {mode}"] = seen
    assert not wrong, wrong
    for kind in ("http", "grpc"):
        metadata = report["server"][kind]
        assert metadata["name"] == "inference-gateway", kind
        assert metadata["extensions"] == ["binary_tensor_data"], kind
        assert report["parameters"][kind] == "[[1.0]]"
        # the backend got the caller's parameters as they were, and none of the transport's
        assert targets.parameters[f"parameters-{kind}"] == {
            "temperature": 0.5, "tag": "t-1", "count": 3, "flag": True}, kind
    assert report["gzip"] == report["INT32"]["http_defaults"]["sent"]
    assert report["stream"] == {"more": 0, "answers": [
        {"error": "model 'nope' not found"},
        {"id": "stream-0", "y": [[0, 0]]}, {"id": "stream-2", "y": [[2, -2]]}]}
