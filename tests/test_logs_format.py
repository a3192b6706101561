"""One log format: application lines as JSON objects shaped like the access line (time, level,
logger, message; the request id and trace ids of the request they were logged for), or text
with `[server] log_format = "text"`; access lines that say who called (address, user agent),
the bytes each way and, over gRPC, the method; probes and scrapes neither logged nor traced
unless `[server] log_probes = true`. And `gateway serve` writes nothing but JSON lines."""

from __future__ import annotations

import gzip
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from aiohttp.test_utils import TestClient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider

from gateway.codecs import tensor_proto
from gateway.config import ConfigError, load_config
from gateway.grpc.calls import peer_address
from gateway.telemetry import request_ids
from gateway.telemetry.logs import (
    ACCESS,
    TEXT_FORMAT,
    JsonFormatter,
    TraceFormatter,
    _process_fields,
    configure_logging,
)
from protos.inference import grpc_service_pb2
from protos.tensorflow_serving.apis import model_pb2, predict_pb2
from tests.conftest import WriteConfig
from tests.servers.gateway_process import gateway_process
from tests.servers.otlp_receiver import OtlpReceiver
from tests.servers.running_gateway import RunningGateway, StartGateway
from tests.waiting import wait_until

pytest_plugins = ["tests.servers.fixtures"]

V2_BODY = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
PROBES = ("/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready", "/ping")
ACCESS_FIELDS = ("time", "trace_id", "span_id", "request_id", "request", "frontend",
                 "principal", "model", "version", "variant", "status", "error", "duration_ms",
                 "client", "user_agent", "bytes_in", "bytes_out")


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [r.access for r in caplog.records  # type: ignore[attr-defined]
            if r.name == "gateway.access"]


def record(message: str, *args: object, level: int = logging.WARNING,
           exc_info: Any = None) -> logging.LogRecord:
    return logging.LogRecord("gateway.test", level, __file__, 1, message, args, exc_info)


# The formatters


def test_a_json_line_outside_a_request_has_no_ids() -> None:
    line = json.loads(JsonFormatter().format(record("model %s loaded", "demo")))
    assert line.keys() == {"time", "level", "logger", "message"}
    assert (line["level"], line["logger"], line["message"]) == (
        "WARNING", "gateway.test", "model demo loaded")
    assert time.strptime(line["time"], "%Y-%m-%dT%H:%M:%S.%fZ")


def test_a_json_line_logged_for_a_traced_request_carries_its_ids() -> None:
    tracer = TracerProvider().get_tracer("test")
    bound = request_ids.bind("req-1")
    try:
        with tracer.start_as_current_span("server") as span:
            line = json.loads(JsonFormatter().format(record("slow backend")))
            text = TraceFormatter(TEXT_FORMAT).format(record("slow backend"))
    finally:
        request_ids.unbind(bound)
    context = span.get_span_context()
    assert (line["trace_id"], line["span_id"], line["request_id"]) == (
        f"{context.trace_id:032x}", f"{context.span_id:016x}", "req-1")
    assert text.endswith(f" WARNING gateway.test: slow backend request_id=req-1 "
                         f"trace_id={context.trace_id:032x}")


def test_a_json_line_carries_the_traceback_and_the_worker() -> None:
    try:
        raise ValueError("boom")
    except ValueError as exc:
        failed = record("unhandled", level=logging.ERROR,
                        exc_info=(type(exc), exc, exc.__traceback__))
    _process_fields["worker"] = 3
    try:
        line = json.loads(JsonFormatter().format(failed))
    finally:
        del _process_fields["worker"]
    assert line["worker"] == 3
    assert line["exception"].startswith("Traceback") and "ValueError: boom" in line["exception"]


@pytest.fixture
def fresh_logging() -> Iterator[None]:
    """The root and access loggers as they were, after a test configured them."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level, ACCESS.handlers[:], ACCESS.propagate
    yield
    root.handlers, level, ACCESS.handlers, ACCESS.propagate = saved
    root.setLevel(level)


@pytest.mark.usefixtures("fresh_logging")
@pytest.mark.parametrize("log_format", ["json", "text"])
def test_serve_writes_application_lines_in_the_configured_format(
        capsys: pytest.CaptureFixture[str], log_format: str) -> None:
    logging.getLogger().handlers = []  # pytest's own come in once the test runs
    configure_logging("info", log_format=log_format)
    ACCESS.info("%s", '{"status": "200"}')
    logging.getLogger("gateway.x").warning("listening on %s", "http://127.0.0.1:1")
    access, application = capsys.readouterr().err.splitlines()
    assert access == '{"status": "200"}'  # bare JSON either way
    if log_format == "json":
        assert {k: v for k, v in json.loads(application).items() if k != "time"} == {
            "level": "WARNING", "logger": "gateway.x",
            "message": "listening on http://127.0.0.1:1"}
    else:
        assert application.endswith(" WARNING gateway.x: listening on http://127.0.0.1:1")


def test_log_format_and_log_probes_are_checked(write_config: WriteConfig) -> None:
    default = load_config(write_config()).server
    assert (default.log_format, default.log_probes) == ("json", False)
    chosen = load_config(write_config(server='log_format = "text"\nlog_probes = true')).server
    assert (chosen.log_format, chosen.log_probes) == ("text", True)
    with pytest.raises(ConfigError, match=r"gateway\.toml:3: server\.log_format: "
                       r"expected one of 'json', 'text', got 'yaml'"):
        load_config(write_config(server='log_format = "yaml"'))


# Access lines


async def test_a_rest_access_line_says_who_called_and_the_bytes_each_way(
        client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    body = json.dumps(V2_BODY).encode()
    packed = gzip.compress(body)
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        plain = await client.post("/v2/models/demo/infer", data=body,
                                  headers={"User-Agent": "curl/8.5.0"})
        compressed = await client.post("/v2/models/demo/infer", data=packed,
                                       headers={"Content-Encoding": "gzip"})
        missing = await client.get("/no/such/endpoint")
    assert plain.status == compressed.status == 200 and missing.status == 404
    first, second, third = access_lines(caplog)
    assert {k: first[k] for k in ("client", "user_agent", "bytes_in", "bytes_out")} == {
        "client": "127.0.0.1", "user_agent": "curl/8.5.0", "bytes_in": len(body),
        "bytes_out": len(await plain.read())}
    assert second["bytes_in"] == len(packed)  # as it crossed the wire
    assert second["user_agent"].startswith("Python/") and "aiohttp" in second["user_agent"]
    assert (third["request"], third["bytes_in"], third["bytes_out"]) == (
        "GET /no/such/endpoint", 0, len(await missing.read()))
    assert tuple(first) == ACCESS_FIELDS


async def test_a_grpc_access_line_names_the_method_the_peer_and_the_bytes(
        gw: RunningGateway, caplog: pytest.LogCaptureFixture) -> None:
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name="tfdemo"))
    request.inputs["x"].CopyFrom(tensor_proto.from_array(np.ones((1, 4), np.float32)))
    v2 = grpc_service_pb2.ModelMetadataRequest(name="demo")
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        reply = await gw.predict.Predict(request)
        metadata = await gw.v2.ModelMetadata(v2)
        with pytest.raises(grpc.aio.AioRpcError):
            await gw.v2.ModelMetadata(grpc_service_pb2.ModelMetadataRequest(name="nope"))
    predicted, described, failed = access_lines(caplog)
    assert {k: predicted[k] for k in ("request", "frontend", "client", "bytes_in",
                                      "bytes_out")} == {
        "request": "/tensorflow.serving.PredictionService/Predict",
        "frontend": "tfserving-grpc", "client": "127.0.0.1", "bytes_in": request.ByteSize(),
        "bytes_out": reply.ByteSize()}
    assert predicted["user_agent"].startswith("grpc-python-asyncio/")
    assert (described["request"], described["bytes_out"]) == (
        "/inference.GRPCInferenceService/ModelMetadata", metadata.ByteSize())
    assert (failed["status"], failed["bytes_in"], failed["bytes_out"]) == (
        "NOT_FOUND", grpc_service_pb2.ModelMetadataRequest(name="nope").ByteSize(), 0)
    assert tuple(predicted) == ACCESS_FIELDS


# Probes and scrapes


async def test_probes_and_scrapes_are_not_logged_or_traced_by_default(
        traced: OtlpReceiver, make_client: Callable[..., Any],
        caplog: pytest.LogCaptureFixture) -> None:
    client: TestClient = await make_client()
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        for path in PROBES:
            assert (await client.get(path)).status == 200, path
        assert (await client.get("/v2")).status == 200  # not a probe
    [line] = access_lines(caplog)
    assert line["request"] == "GET /v2"
    await wait_until(lambda: any(s.name == "GET /v2" for s in traced.spans()))
    assert [s.name for s in traced.spans() if s.kind == "server"] == ["GET /v2"]


async def test_log_probes_logs_and_traces_them(
        traced: OtlpReceiver, make_client: Callable[..., Any],
        caplog: pytest.LogCaptureFixture) -> None:
    client: TestClient = await make_client(server="log_probes = true")
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        for path in PROBES:
            assert (await client.get(path)).status == 200, path
    assert [line["request"] for line in access_lines(caplog)] == [f"GET {p}" for p in PROBES]
    await wait_until(lambda: len([s for s in traced.spans() if s.kind == "server"])
                     == len(PROBES))


async def test_grpc_health_checks_are_never_logged(start_gateway: StartGateway,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    gw = await start_gateway(server="log_probes = true")
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        await health_pb2_grpc.HealthStub(gw.channel).Check(health_pb2.HealthCheckRequest())
        await gw.v2.ServerLive(grpc_service_pb2.ServerLiveRequest())
        await gw.v2.ServerReady(grpc_service_pb2.ServerReadyRequest())
    assert access_lines(caplog) == []


# A real `gateway serve`


def test_serve_writes_nothing_but_json_lines(write_config: WriteConfig, tmp_path: Path) -> None:
    log = tmp_path / "gateway.log"
    with gateway_process(write_config(), log) as gateway:
        gateway.wait_ready()
        status, _ = gateway.get("/v2/models/nope", {"X-Request-Id": "lost-1"})
        assert status == 404
        gateway.wait_until("logged", lambda: "lost-1" in gateway.log_text())
    lines = [json.loads(line) for line in gateway.log_text().splitlines()]
    application = [line for line in lines if "message" in line]
    assert any(line["message"].startswith("listening on http://") for line in application)
    [refusal] = [line for line in application if line.get("request_id") == "lost-1"]
    assert (refusal["level"], refusal["logger"]) == ("INFO", "gateway.errors")
    assert "GET /v2/models/nope -> 404 NotFound" in refusal["message"]
    [access] = [line for line in lines if line.get("request") == "GET /v2/models/nope"]
    assert (access["request_id"], access["status"]) == ("lost-1", "404")
    # wait_ready's probes: neither their access lines nor "not ready" refusals
    assert not any("/readyz" in line.get("request", line.get("message")) for line in lines)


@pytest.mark.parametrize(("peer", "address"), [
    ("ipv4:10.0.0.7:51234", "10.0.0.7"), ("ipv6:%5B::1%5D:51234", "::1"),
    ("ipv6:[fe80::1]:443", "fe80::1"), ("unix:/run/gateway.sock", "/run/gateway.sock"),
    ("in-process", "in-process")])
def test_a_grpc_peer_is_logged_as_the_clients_address(peer: str, address: str) -> None:
    assert peer_address(peer) == address
