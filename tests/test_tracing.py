"""Traces end to end: gateways configured through the OTEL_* environment export to a real
OTLP/gRPC receiver, and what arrives is asserted: one trace per request continuing the
caller's, the steps as children of the server span, the batch span's links, and the
`traceparent` a TF Serving backend received."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import grpc
import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

import gateway
from gateway.codecs import tensor_proto
from gateway.ratelimit import gcra
from gateway.rest import tracing as rest_tracing
from gateway.telemetry.logs import TEXT_FORMAT, TraceFormatter
from protos.inference import grpc_service_pb2
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


@pytest.fixture
def make_client(make_client: Callable[..., Any]) -> Callable[..., Any]:
    """conftest's, with `detail = "steps"` unless the test configures `[tracing]`: these tests
    assert the per-step spans (tests/test_tracing_sampler.py covers the default detail)."""

    async def make(extra: str = "", **kwargs: str) -> TestClient:
        if "[tracing]" not in extra:
            extra += '\n[tracing]\ndetail = "steps"\n'
        client: TestClient = await make_client(extra, **kwargs)
        return client

    return make


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


async def server_span(receiver: OtlpReceiver, trace_id: str) -> ReceivedSpan:
    """The trace's server span, once it arrived (it ends after its children)."""
    def servers() -> list[ReceivedSpan]:
        return receiver.spans(lambda s: s.trace_id == trace_id and s.kind == "server")

    await wait_until(servers)
    [found] = servers()
    return found


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
    peer_port = server.attributes.pop("network.peer.port")
    assert server.attributes == {  # semconv HTTP server span (v1.44)
        "http.request.method": "POST", "http.route": "/v2/models/{model}/infer",
        "url.path": "/v2/models/demo/infer", "url.scheme": "http",
        "network.protocol.version": "1.1", "server.address": "127.0.0.1",
        "server.port": client.port, "client.address": "127.0.0.1",
        "network.peer.address": "127.0.0.1",
        "user_agent.original": f"Python/{sys.version_info.major}.{sys.version_info.minor} "
                               f"aiohttp/{aiohttp.__version__}",
        "http.response.status_code": 200, "gateway.request_id": reply.headers["X-Request-Id"]}
    assert isinstance(peer_port, int) and peer_port != client.port
    assert server.resource["service.name"] == "gateway-under-test"  # OTEL_SERVICE_NAME
    assert server.resource["service.version"] == gateway.__version__
    assert server.schema_url == "https://opentelemetry.io/schemas/1.44.0"
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

    # One name for both ends, as the RPC conventions (v1.44) have it: no leading slash.
    name = "tensorflow.serving.PredictionService/Predict"
    await wait_until(lambda: len(traced.spans(in_trace(trace_id))) == 3)  # both ends, route
    [route] = traced.spans(lambda s: s.trace_id == trace_id and s.name == "route")
    [server] = traced.spans(lambda s: s.trace_id == trace_id and s.kind == "server")
    [client] = traced.spans(lambda s: s.trace_id == trace_id and s.kind == "client")
    assert (server.name, server.parent_id, client.name) == (name, CALLER_SPAN, name)
    assert isinstance(server.attributes.pop("network.peer.port"), int)
    server.attributes.pop("gateway.request_id", None)  # tests/test_request_ids.py
    assert server.attributes == {
        "rpc.system.name": "grpc", "rpc.method": name, "rpc.response.status_code": "OK",
        "network.peer.address": "127.0.0.1"}
    assert route.parent_id == client.parent_id == server.span_id
    assert route.attributes["gateway.adapter"] == "tf"
    assert client.attributes == {
        "rpc.system.name": "grpc", "rpc.method": name, "rpc.response.status_code": "OK",
        "server.address": "127.0.0.1", "server.port": standin.port}
    assert not server.error and not client.error
    # The backend got the client span as its parent: the same trace, one hop further.
    [predict] = standin.calls("Predict")
    assert predict.metadata["traceparent"] == f"00-{trace_id}-{client.span_id}-01"


async def test_rest_spans_are_named_by_each_dialects_route_and_say_who_called(
        traced: OtlpReceiver, start_gateway: StartGateway, standin: TfServingStandIn) -> None:
    """`METHOD route`, the route as TF Serving, KServe v2 and TorchServe name it; the client
    behind a proxy; a 5xx names its status in `error.type` (semconv HTTP, v1.44)."""
    gw = await start_gateway()
    rows = {"instances": [[1.0] * 4]}
    cases = [  # method, path, route (None: no route matched), status
        ("POST", "/v1/models/tfdemo:predict", "/v1/models/{model}:predict", 200),
        ("POST", "/v1/models/tfdemo/versions/2:predict",
         "/v1/models/{model}/versions/{version}:predict", 200),
        ("POST", "/v1/models/tfdemo/labels/stable:predict",
         "/v1/models/{model}/labels/{label}:predict", 200),
        ("GET", "/v1/models/tfdemo/metadata", "/v1/models/{model}/metadata", 200),
        ("GET", "/v1/models/tfdemo", "/v1/models/{model}", 200),
        ("POST", "/v1/models/tfdemo:explode", None, 404),
        ("POST", "/v2/models/demo/versions/1/infer", "/v2/models/{model}/versions/{version}/infer",
         400),
        ("POST", "/predictions/demo/1", "/predictions/{model}/{version}", 200),
        ("POST", "/nowhere", None, 404)]
    for n, (method, path, route, status) in enumerate(cases):
        trace_id = f"{n + 1:032x}"
        body = [[1.0] * 4] if path.startswith("/predictions") else rows
        reply = await gw.http.request(method, path, json=body if method == "POST" else None,
                                      headers={"traceparent": traceparent(trace_id)})
        assert reply.status == status, (path, await reply.text())
        server = await server_span(traced, trace_id)
        assert server.name == (f"{method} {route}" if route else method), path
        assert server.attributes.get("http.route") == route, path
        assert server.attributes["http.response.status_code"] == status

    standin.fail_next("Predict", grpc.StatusCode.INTERNAL, "the backend broke")
    trace_id = "c" * 32
    reply = await gw.http.post(
        "/v1/models/tfdemo:predict?sig=s3cr3t&q=1", json=rows,
        headers={"traceparent": traceparent(trace_id), "User-Agent": "probe/1.0",
                 "X-Forwarded-For": "203.0.113.7, 10.0.0.1",
                 "X-Forwarded-Host": "api.example.com:8443"})
    assert reply.status == 502
    server = await server_span(traced, trace_id)
    assert server.error and server.attributes["error.type"] == "502"
    assert {key: server.attributes[key] for key in (
        "client.address", "server.address", "server.port", "user_agent.original",
        "url.query", "network.peer.address")} == {
        "client.address": "203.0.113.7", "server.address": "api.example.com",
        "server.port": 8443, "user_agent.original": "probe/1.0",
        "url.query": "sig=REDACTED&q=1", "network.peer.address": "127.0.0.1"}


async def test_grpc_server_spans_are_errors_only_for_the_servers_codes(
        traced: OtlpReceiver, start_gateway: StartGateway, standin: TfServingStandIn) -> None:
    gw = await start_gateway()
    probe = "1" * 32  # a probe: not traced, as REST's /v2/health/live is not
    await gw.v2.ServerLive(grpc_service_pb2.ServerLiveRequest(),
                           metadata=[("traceparent", traceparent(probe))])
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name="tfdemo"))
    request.inputs["x"].CopyFrom(tensor_proto.from_array(np.ones((1, 4), np.float32)))
    standin.fail_next("Predict", grpc.StatusCode.INTERNAL, "the backend broke")
    unknown = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name="nope"))
    unknown.inputs["x"].CopyFrom(request.inputs["x"])
    for trace_id, message, code in (("d" * 32, request, grpc.StatusCode.INTERNAL),
                                    ("e" * 32, unknown, grpc.StatusCode.NOT_FOUND)):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gw.predict.Predict(message, metadata=[("traceparent", traceparent(trace_id))])
        assert caught.value.code() == code
    failed, refused = await server_span(traced, "d" * 32), await server_span(traced, "e" * 32)
    assert failed.error and failed.attributes["error.type"] == "INTERNAL"
    assert failed.attributes["rpc.response.status_code"] == "INTERNAL"
    assert not refused.error and "error.type" not in refused.attributes  # the caller's mistake
    assert refused.attributes["rpc.response.status_code"] == "NOT_FOUND"
    assert traced.spans(in_trace(probe)) == []


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
    await spans_of(traced, sampled, {"POST /v1/models/{model}:predict", "route"})
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
    spans = await spans_of(traced, trace_id, {"POST /v1/models/{model}:predict", name})
    client, server = spans[name], spans["POST /v1/models/{model}:predict"]
    assert client.error  # a client span: every code but OK is an error, named by the code
    assert client.attributes["rpc.response.status_code"] == "INVALID_ARGUMENT"
    assert client.attributes["error.type"] == "INVALID_ARGUMENT"
    # A 4xx is the client's failure, not the server's.
    assert server.attributes["http.response.status_code"] == 400 and not server.error
    assert "error.type" not in server.attributes


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
    redis = urlsplit(redis_server)
    assert limit.attributes == {  # semconv database, Redis (v1.44)
        "db.system.name": "redis", "db.operation.name": "EVALSHA",
        "db.stored_procedure.name": gcra.SHA, "db.namespace": "0",
        "server.address": redis.hostname, "server.port": redis.port}


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


@pytest.mark.parametrize(("headers", "method", "expected"), [
    ({"Forwarded": 'for="[2001:db8::17]:4711";host="api.example.com"'}, "POST",
     {"client.address": "2001:db8::17", "server.address": "api.example.com",
      "server.port": 80, "http.request.method": "POST"}),
    ({"Forwarded": "for=192.0.2.60:47011", "Host": "gw:8443"}, "GET",
     {"client.address": "192.0.2.60", "server.address": "gw", "server.port": 8443}),
    ({"Host": "[::1]:9000"}, "BREW",
     {"server.address": "::1", "server.port": 9000, "http.request.method": "_OTHER",
      "http.request.method_original": "BREW"}),
])
def test_request_attributes_read_proxies_and_unknown_methods(
        headers: dict[str, str], method: str, expected: dict[str, Any]) -> None:
    request = make_mocked_request(method, "/v2/models/demo/infer?X-Amz-Signature=abc&q=1",
                                  headers=headers)
    attributes = rest_tracing.request_attributes(request)
    assert {key: attributes.get(key) for key in expected} == expected
    assert attributes["url.query"] == "X-Amz-Signature=REDACTED&q=1"
