"""The access log: one JSON line per request from either front door (who, what served it,
how it ended, how long it took), none when `[server] access_log` is off."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import pytest
from aiohttp.test_utils import TestClient

from gateway.codecs import tensor_proto
from protos.tensorflow_serving.apis import model_pb2, predict_pb2
from tests.auth_support import bearer, claims, hs_provider, sign
from tests.servers.running_gateway import StartGateway

pytest_plugins = ["tests.servers.fixtures"]

V2_BODY = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    lines = []
    for record in caplog.records:
        if record.name == "gateway.access":
            assert json.loads(record.getMessage()) == record.access  # type: ignore[attr-defined]
            lines.append(record.access)  # type: ignore[attr-defined]
    return lines


async def test_a_rest_request_is_one_json_line(make_client: Callable[..., Any],
                                               caplog: pytest.LogCaptureFixture) -> None:
    client: TestClient = await make_client(f"[auth]\nenabled = true\n{hs_provider()}")
    token = sign(claims(time.time(), sub="alice", scope="predict"))
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        ok = await client.post("/v2/models/demo/labels/stable/infer", json=V2_BODY,
                               headers=bearer(token))
        refused = await client.post("/v2/models/demo/infer", json=V2_BODY)
    assert (ok.status, refused.status) == (404, 401)  # v2 has no label paths: a 404
    first, second = access_lines(caplog)
    assert first["request"] == "POST /v2/models/demo/labels/stable/infer"
    assert (first["status"], first["error"], first["model"]) == ("404", "HTTPNotFound", "")
    assert second["request"] == "POST /v2/models/demo/infer"
    assert (second["status"], second["error"], second["principal"]) == (
        "401", "Unauthenticated", "anonymous")
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        caplog.clear()
        reply = await client.post("/v2/models/demo/infer", json=V2_BODY, headers=bearer(token))
    assert reply.status == 200
    [line] = access_lines(caplog)
    assert set(line) == {"time", "trace_id", "span_id", "request_id", "request", "frontend",
                         "principal", "model", "version", "variant", "status", "error",
                         "duration_ms", "client", "user_agent", "bytes_in", "bytes_out"}
    assert {k: line[k] for k in ("trace_id", "span_id", "frontend", "principal", "model",
                                 "version", "variant", "status", "error")} == {
        "trace_id": "", "span_id": "", "frontend": "v2", "principal": "alice",
        "model": "demo", "version": "1", "variant": "", "status": "200", "error": ""}
    assert 0 < line["duration_ms"] < 10_000
    assert time.strptime(line["time"], "%Y-%m-%dT%H:%M:%S.%fZ")


async def test_a_grpc_request_is_one_json_line(start_gateway: StartGateway,
                                               caplog: pytest.LogCaptureFixture) -> None:
    gw = await start_gateway()
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name="tfdemo"))
    request.inputs["x"].CopyFrom(tensor_proto.from_array(np.ones((1, 4), np.float32)))
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        await gw.predict.Predict(request)
        with pytest.raises(grpc.aio.AioRpcError):
            await gw.predict.Predict(predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name="nope")))
    ok, failed = access_lines(caplog)
    assert {k: ok[k] for k in ("frontend", "model", "version", "status", "error")} == {
        "frontend": "tfserving-grpc", "model": "tfdemo", "version": "2", "status": "OK",
        "error": ""}
    assert (failed["model"], failed["status"], failed["error"]) == (
        "nope", "NOT_FOUND", "NotFound")


async def test_no_access_lines_when_off(make_client: Callable[..., Any],
                                        caplog: pytest.LogCaptureFixture) -> None:
    client: TestClient = await make_client(server="access_log = false")
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        assert (await client.post("/v2/models/demo/infer", json=V2_BODY)).status == 200
    assert access_lines(caplog) == []
