"""Traces end to end: gateways configured through the OTEL_* environment export to a real
OTLP/gRPC receiver, and what arrives is asserted: one trace per request continuing the
caller's, the steps as children of the server span, the batch span's links, and the
`traceparent` a TF Serving backend received."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.codecs import tensor_proto
from gateway.telemetry.logs import TEXT_FORMAT, TraceFormatter
from protos.tensorflow_serving.apis import model_pb2, predict_pb2
from tests.auth_support import bearer, claims, hs_provider, sign
from tests.redis_server import redis_server  # noqa: F401 (a fixture)
from tests.servers.otlp_receiver import OtlpReceiver, ReceivedSpan, http_export_handler
from tests.servers.running_gateway import RunningGateway, StartGateway
from tests.servers.tfserving_standin import TfServingStandIn
from tests.waiting import wait_until

pytest_plugins = ["tests.servers.fixtures"]

V2_BODY = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
CALLER_SPAN = "00f067aa0ba902b7"


def traceparent(trace_id: str) -> str:
    return f"00-{trace_id}-{CALLER_SPAN}-01"


def in_trace(trace_id: str) -> Callable[[ReceivedSpan], bool]:
    return lambda span: span.trace_id == trace_id


async def spans_of(receiver: OtlpReceiver, trace_id: str, names: set[str]
                   ) -> dict[str, ReceivedSpan]:
    """The trace's spans by name, once every one of `names` arrived."""
    await wait_until(lambda: names <= {s.name for s in receiver.spans(in_trace(trace_id))})
    found = receiver.spans(in_trace(trace_id))
    assert len({s.name for s in found}) == len(found), "one span of each name per request"
    return {s.name: s for s in found}


async def test_a_rest_request_is_one_trace_continuing_the_callers(
        traced: OtlpReceiver, make_client: Callable[..., Any]) -> None:
    client: TestClient = await make_client()
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    reply = await client.post("/v2/models/demo/infer", json=V2_BODY,
                              headers={"traceparent": traceparent(trace_id)})
    assert reply.status == 200
    spans = await spans_of(traced, trace_id, {"POST /v2/models/{model}/infer", "route", "onnx"})
    server, route, onnx = (spans["POST /v2/models/{model}/infer"], spans["route"],
                           spans["onnx"])
    assert (server.kind, server.parent_id) == ("server", CALLER_SPAN)
    assert server.attributes == {
        "http.request.method": "POST", "http.route": "/v2/models/{model}/infer",
        "url.path": "/v2/models/demo/infer", "url.scheme": "http",
        "http.response.status_code": 200}
    assert server.resource["service.name"] == "gateway-under-test"  # OTEL_SERVICE_NAME
    assert route.parent_id == onnx.parent_id == server.span_id
    assert route.attributes == {"gateway.route": "", "gateway.variant": "",
                                "gateway.adapter": "local", "gateway.model": "demo",
                                "gateway.model.version": ""}
    assert onnx.attributes == {"gateway.model": "demo", "gateway.model.version": "1"}
    # The batch that ran it is a trace of its own, linked to the request's adapter span.
    await wait_until(lambda: any(link.span_id == onnx.span_id
                                 for s in traced.spans() for link in s.links))
    batch = next(s for s in traced.spans() if any(link.span_id == onnx.span_id
                                                  for link in s.links))
    assert batch.name == "batch demo/1" and batch.parent_id == ""
    assert batch.trace_id != trace_id
    assert batch.attributes["gateway.batch.size"] == 1
    assert batch.attributes["gateway.batch.requests"] == 1
    [link] = batch.links
    assert (link.trace_id, link.attributes["gateway.batch.rows"]) == (trace_id, 1)
    assert 0 <= link.attributes["gateway.batch.queue_wait_s"] <= \
        batch.attributes["gateway.batch.queue_wait_s"]


async def test_each_request_is_its_own_trace(traced: OtlpReceiver,
                                             make_client: Callable[..., Any]) -> None:
    client: TestClient = await make_client()
    callers = ["11111111111111111111111111111111", "22222222222222222222222222222222"]
    for trace_id in callers:
        reply = await client.post("/v2/models/demo/infer", json=V2_BODY,
                                  headers={"traceparent": traceparent(trace_id)})
        assert reply.status == 200
    reply = await client.post("/v2/models/demo/infer", json=V2_BODY)  # no caller trace
    assert reply.status == 200

    def servers() -> list[ReceivedSpan]:
        return traced.spans(lambda s: s.kind == "server")

    await wait_until(lambda: len(servers()) == 3)
    first, second, fresh = sorted(servers(), key=lambda s: callers.index(s.trace_id)
                                  if s.trace_id in callers else 2)
    assert [first.trace_id, second.trace_id] == callers
    assert fresh.trace_id not in callers and fresh.parent_id == ""
    for server in (first, second, fresh):
        children = await spans_of(traced, server.trace_id, {"route", "onnx"})
        assert {children["route"].parent_id, children["onnx"].parent_id} == {server.span_id}


async def test_a_grpc_request_reaches_tf_serving_with_the_callers_trace(
        traced: OtlpReceiver, start_gateway: StartGateway, standin: TfServingStandIn) -> None:
    gw: RunningGateway = await start_gateway()
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name="tfdemo"))
    request.inputs["x"].CopyFrom(tensor_proto.from_array(np.ones((1, 4), np.float32)))
    await gw.predict.Predict(request, metadata=[("traceparent", traceparent(trace_id))])

    name = "tensorflow.serving.PredictionService/Predict"
    spans = await spans_of(traced, trace_id, {f"/{name}", "route", name})
    server, route, client = spans[f"/{name}"], spans["route"], spans[name]
    assert (server.kind, server.parent_id) == ("server", CALLER_SPAN)
    assert {k: server.attributes[k] for k in ("rpc.system", "rpc.service", "rpc.method")} == {
        "rpc.system": "grpc", "rpc.service": "tensorflow.serving.PredictionService",
        "rpc.method": "Predict"}
    assert route.parent_id == client.parent_id == server.span_id
    assert route.attributes["gateway.adapter"] == "tf"
    assert client.kind == "client"
    assert client.attributes == {
        "rpc.system": "grpc", "rpc.service": "tensorflow.serving.PredictionService",
        "rpc.method": "Predict", "server.address": "127.0.0.1", "server.port": standin.port}
    # The backend got the client span as its parent: the same trace, one hop further.
    [predict] = standin.calls("Predict")
    assert predict.metadata["traceparent"] == f"00-{trace_id}-{client.span_id}-01"


async def test_an_unsampled_caller_is_not_recorded_but_its_trace_reaches_the_backend(
        traced: OtlpReceiver, monkeypatch: pytest.MonkeyPatch, start_gateway: StartGateway,
        standin: TfServingStandIn) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_always_on")
    gw = await start_gateway()
    unsampled, sampled = "d" * 32, "e" * 32
    for trace_id, flags in ((unsampled, "00"), (sampled, "01")):
        reply = await gw.http.post(
            "/v1/models/tfdemo:predict", json={"instances": [[1.0] * 4]},
            headers={"traceparent": f"00-{trace_id}-{CALLER_SPAN}-{flags}"})
        assert reply.status == 200
    first, second = standin.calls("Predict")
    assert first.metadata["traceparent"].startswith(f"00-{unsampled}-")
    assert first.metadata["traceparent"].endswith("-00")
    await spans_of(traced, sampled, {"POST /v1/models/{tail}", "route"})
    await gw.http.close()  # flushes every span the gateway recorded
    assert traced.spans(in_trace(unsampled)) == []
    assert second.metadata["traceparent"].endswith("-01")


async def test_a_failed_backend_call_is_an_error_span_with_its_grpc_code(
        traced: OtlpReceiver, start_gateway: StartGateway, standin: TfServingStandIn) -> None:
    gw = await start_gateway()
    standin.fail_next("Predict", grpc.StatusCode.INVALID_ARGUMENT, "bad input")
    trace_id = "5" * 32
    reply = await gw.http.post("/v1/models/tfdemo:predict", json={"instances": [[1.0] * 4]},
                               headers={"traceparent": traceparent(trace_id)})
    assert reply.status == 400
    name = "tensorflow.serving.PredictionService/Predict"
    spans = await spans_of(traced, trace_id, {"POST /v1/models/{tail}", name})
    client, server = spans[name], spans["POST /v1/models/{tail}"]
    assert client.error and client.attributes["rpc.grpc.status_code"] == 3
    assert client.attributes["error.type"] == "AioRpcError"
    # A 4xx is the client's failure, not the server's.
    assert server.attributes["http.response.status_code"] == 400 and not server.error


async def test_without_tracing_nothing_is_traced_or_propagated(
        start_gateway: StartGateway, standin: TfServingStandIn) -> None:
    gw = await start_gateway()
    assert gw.http.gateway.tracing is None  # type: ignore[attr-defined]
    reply = await gw.http.post("/v1/models/tfdemo:predict", json={"instances": [[1.0] * 4]},
                               headers={"traceparent": traceparent("6" * 32)})
    assert reply.status == 200
    [predict] = standin.calls("Predict")
    assert "traceparent" not in predict.metadata


async def test_authentication_is_a_child_span_that_names_the_refusal(
        traced: OtlpReceiver, make_client: Callable[..., Any]) -> None:
    client: TestClient = await make_client(f"[auth]\nenabled = true\n{hs_provider()}")
    accepted, refused = "7" * 32, "8" * 32
    token = sign(claims(time.time(), scope="predict"))
    reply = await client.post("/v2/models/demo/infer", json=V2_BODY,
                              headers={**bearer(token), "traceparent": traceparent(accepted)})
    assert reply.status == 200
    reply = await client.post("/v2/models/demo/infer", json=V2_BODY,
                              headers={"traceparent": traceparent(refused)})
    assert reply.status == 401
    ok = await spans_of(traced, accepted, {"authenticate", "POST /v2/models/{model}/infer"})
    assert ok["authenticate"].parent_id == ok["POST /v2/models/{model}/infer"].span_id
    assert ok["authenticate"].attributes == {"gateway.auth.cached": False}
    assert not ok["authenticate"].error
    failed = (await spans_of(traced, refused, {"authenticate"}))["authenticate"]
    assert failed.error and failed.attributes["gateway.auth.failure"] == "missing"


async def test_the_rate_limit_is_a_redis_client_span(
        traced: OtlpReceiver, make_client: Callable[..., Any], tmp_path: Path,
        redis_server: str) -> None:  # noqa: F811
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "limits.toml").write_text(
        '[[limits]]\nname = "all"\nmodels = ["*"]\nrate = 100\nburst = 100\n')
    client: TestClient = await make_client(
        f'[redis]\nurl = "{redis_server}"\ntimeout_ms = 2000\n'
        f'[policies]\ndirectory = "{policies}"\n')
    trace_id = "f" * 32
    reply = await client.post("/v2/models/demo/infer", json=V2_BODY,
                              headers={"traceparent": traceparent(trace_id)})
    assert reply.status == 200
    spans = await spans_of(traced, trace_id, {"ratelimit", "POST /v2/models/{model}/infer"})
    limit = spans["ratelimit"]
    assert (limit.kind, limit.parent_id) == ("client",
                                             spans["POST /v2/models/{model}/infer"].span_id)
    assert limit.attributes == {"db.system": "redis", "db.operation.name": "EVALSHA"}


async def test_an_error_is_logged_once_with_its_trace_id(
        traced: OtlpReceiver, make_client: Callable[..., Any],
        caplog: pytest.LogCaptureFixture) -> None:
    client: TestClient = await make_client()
    trace_id = "9" * 32
    formatter = TraceFormatter(TEXT_FORMAT)
    lines: list[str] = []

    class Lines(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(formatter.format(record))

    handler = Lines(logging.INFO)
    logging.getLogger("gateway.errors").addHandler(handler)
    try:
        with caplog.at_level(logging.INFO, logger="gateway.errors"):
            reply = await client.post("/v2/models/nope/infer", json=V2_BODY,
                                      headers={"traceparent": traceparent(trace_id)})
    finally:
        logging.getLogger("gateway.errors").removeHandler(handler)
    assert reply.status == 404
    [line] = lines
    assert "POST /v2/models/nope/infer -> 404 NotFound" in line
    assert line.endswith(f" trace_id={trace_id}")


async def test_the_access_line_carries_the_trace(
        traced: OtlpReceiver, make_client: Callable[..., Any],
        caplog: pytest.LogCaptureFixture) -> None:
    client: TestClient = await make_client()
    trace_id = "a" * 32
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        reply = await client.post("/v2/models/demo/infer", json=V2_BODY,
                                  headers={"traceparent": traceparent(trace_id)})
    assert reply.status == 200
    [record] = [r for r in caplog.records if r.name == "gateway.access"]
    line = record.access  # type: ignore[attr-defined]
    server = (await spans_of(traced, trace_id, {"POST /v2/models/{model}/infer"}))[
        "POST /v2/models/{model}/infer"]
    assert (line["trace_id"], line["span_id"]) == (trace_id, server.span_id)


async def test_spans_go_over_otlp_http_too(monkeypatch: pytest.MonkeyPatch,
                                           make_client: Callable[..., Any]) -> None:
    received: list[ReceivedSpan] = []
    collector = web.Application()
    collector.router.add_post("/v1/traces", http_export_handler(received))
    async with TestServer(collector, host="127.0.0.1") as server:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{server.port}")
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "10")
        client: TestClient = await make_client(
            '[tracing]\nexporter = "otlp"\nprotocol = "http/protobuf"\nendpoint = "http://x:1"\n')
        reply = await client.post("/v2/models/demo/infer", json=V2_BODY,
                                  headers={"traceparent": traceparent("b" * 32)})
        assert reply.status == 200
        await wait_until(lambda: any(s.trace_id == "b" * 32 and s.kind == "server"
                                     for s in received))
        await client.close()  # flushes while the collector still listens
