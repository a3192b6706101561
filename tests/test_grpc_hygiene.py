"""The gRPC listener as a hostile or careless client meets it, over real channels on loopback:
calls are authenticated from their metadata before their message is read (an anonymous
400 MB-shaped Predict costs nothing, a repeated `authorization` is refused as REST refuses it),
and the HTTP/2 limits of `[server]` / `[server.grpc]` hold: message size, streams per
connection, ping enforcement, connection idle time and age."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from multidict import CIMultiDict

from gateway.grpc.server import OPEN_V2_METHODS, protected_methods
from protos.inference import grpc_service_pb2 as pb
from protos.inference import grpc_service_pb2_grpc
from protos.tensorflow.core.framework import types_pb2
from protos.tensorflow_serving.apis import model_pb2, predict_pb2, prediction_service_pb2_grpc
from tests.auth_support import claims, hs_provider, sign
from tests.servers.otlp_receiver import OtlpReceiver
from tests.servers.running_gateway import RunningGateway, StartGateway
from tests.servers.tfserving_standin import TfServingStandIn
from tests.test_grpc_frontend import failure, predict_request
from tests.waiting import wait_until

pytest_plugins = ["tests.servers.fixtures"]

AUTH = f"""
[auth]
enabled = true
{hs_provider()}
"""
ROWS = [[1.0, 2.0, 3.0, 4.0]]
MIB = 1024 * 1024
CALLER_SPAN = "00f067aa0ba902b7"
READY = grpc.ChannelConnectivity.READY


def token(scope: str = "predict") -> str:
    return f"Bearer {sign(claims(time.time(), scope=scope))}"


def own_connection(target: str, *options: tuple[str, int]) -> grpc.aio.Channel:
    """A channel on a connection of its own (channels to one target share one by default)."""
    return grpc.aio.insecure_channel(
        target, options=[("grpc.use_local_subchannel_pool", 1), *options])


async def ready(gw: RunningGateway) -> bool:
    return (await gw.http.get("/readyz")).status == 200


@pytest.fixture
async def secured(start_gateway: StartGateway) -> RunningGateway:
    gw = await start_gateway(AUTH)
    await wait_until(lambda: ready(gw))
    return gw


# memory and connections, read from /proc (the gateway runs in this process)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


def reset_peak_rss() -> int:
    """Makes the peak RSS (VmHWM) the current RSS; returns it, in bytes."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmHWM") * 1024


def peak_rss() -> int:
    return _status_kib("VmHWM") * 1024


def client_ports(server_port: int) -> set[int]:
    """Local ports of this process's established TCP connections to 127.0.0.1:server_port
    (gRPC's sockets are dual-stack: IPv4-mapped addresses in /proc/net/tcp6)."""
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            local, remote, state = line.split()[1:4]
            if state == "01" and remote.endswith(f"0100007F:{server_port:04X}"):
                ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


# authenticate first


async def test_an_anonymous_huge_shape_predict_is_refused_before_a_tensor_is_built(
        secured: RunningGateway) -> None:
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name="demo"))
    x = request.inputs["x"]
    x.dtype = types_pb2.DT_FLOAT
    x.tensor_shape.dim.add(size=25_000_000)
    x.tensor_shape.dim.add(size=4)
    x.float_val.append(1.0)  # one value fills the shape: 400 MB once decoded
    assert request.ByteSize() < 40
    before = reset_peak_rss()
    error = await failure(secured.predict.Predict(request, timeout=10))
    rise = peak_rss() - before
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == "a bearer token is required"
    assert ("www-authenticate", 'Bearer realm="gateway"') in tuple(
        error.trailing_metadata() or ())
    assert rise < 50 * MIB, f"peak RSS rose {rise / MIB:.0f} MiB"


async def test_a_refused_call_is_traced_and_counted_like_any_other(
        traced: OtlpReceiver, start_gateway: StartGateway) -> None:
    gw = await start_gateway(AUTH)
    trace_id = "5bf92f3577b34da6a3ce929d0e0e4736"
    error = await failure(gw.predict.Predict(
        predict_request("demo", ROWS), timeout=10,
        metadata=(("traceparent", f"00-{trace_id}-{CALLER_SPAN}-01"),)))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    await wait_until(lambda: traced.spans(lambda s: s.trace_id == trace_id))
    [server] = traced.spans(lambda s: s.trace_id == trace_id)  # refused before any step
    assert (server.kind, server.parent_id) == ("server", CALLER_SPAN)
    assert server.name == "tensorflow.serving.PredictionService/Predict"
    assert server.attributes["rpc.response.status_code"] == "UNAUTHENTICATED"
    assert not server.error  # the caller's failure, not the server's
    metrics = await (await gw.http.get("/metrics")).text()
    # The model is not read: an anonymous caller cannot make up a series.
    assert ('gateway_requests_total{frontend="tfserving-grpc",model="",'
            'status="UNAUTHENTICATED",variant=""} 1.0') in metrics


@pytest.mark.parametrize("method", sorted(protected_methods()))
async def test_an_anonymous_call_is_refused_before_its_message_arrives(
        secured: RunningGateway, method: str) -> None:
    """The client sends headers and holds its message back: only a server that never waits
    for the message can answer."""
    held = asyncio.Event()

    async def message_never_sent() -> AsyncIterator[bytes]:
        await held.wait()
        yield b""

    call = secured.channel.stream_unary(method, request_serializer=bytes)(
        message_never_sent(), timeout=10)
    try:
        error = await failure(call)
    finally:
        held.set()
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error.details()
    assert error.details() == "a bearer token is required"


def test_every_dialect_rpc_but_the_v2_server_ones_is_protected() -> None:
    protected = protected_methods()
    assert {"/tensorflow.serving.PredictionService/Predict",
            "/tensorflow.serving.ModelService/GetModelStatus",
            "/inference.GRPCInferenceService/ModelInfer",
            "/inference.GRPCInferenceService/ModelReady"} <= set(protected)
    assert not {f"/inference.GRPCInferenceService/{m}" for m in OPEN_V2_METHODS} & set(protected)
    assert not [m for m in protected if m.startswith(("/grpc.health", "/grpc.reflection"))]


async def test_health_reflection_and_the_v2_server_rpcs_need_no_token(
        secured: RunningGateway) -> None:
    assert (await secured.v2.ServerLive(pb.ServerLiveRequest(), timeout=10)).live
    assert (await secured.v2.ServerReady(pb.ServerReadyRequest(), timeout=10)).ready
    assert (await secured.v2.ServerMetadata(pb.ServerMetadataRequest(), timeout=10)).name
    health = await health_pb2_grpc.HealthStub(secured.channel).Check(
        health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(secured.channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
    async for reply in reflection:
        assert {s.name for s in reply.list_services_response.service}
        break


async def test_a_token_admits_the_call_and_its_scope_still_decides(
        secured: RunningGateway) -> None:
    reply = await secured.predict.Predict(predict_request("demo", ROWS), timeout=10,
                                          metadata=(("authorization", token()),))
    assert reply.outputs["probabilities"].tensor_shape.dim[0].size == 1
    error = await failure(secured.predict.Predict(
        predict_request("demo", ROWS), timeout=10,
        metadata=(("authorization", token("profile")),)))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_repeated_authorization_metadata_is_refused_as_rest_refuses_it(
        secured: RunningGateway) -> None:
    twice = (("authorization", token()), ("authorization", token()))
    error = await failure(secured.predict.Predict(predict_request("demo", ROWS), timeout=10,
                                                  metadata=twice))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    rest = await secured.http.post("/v1/models/demo:predict", json={"instances": ROWS},
                                   headers=CIMultiDict((k.title(), v) for k, v in twice))
    assert rest.status == 401
    assert error.details() == (await rest.json())["error"] == "more than one Authorization header"
    assert dict(error.trailing_metadata() or ())["www-authenticate"] == \
        rest.headers["WWW-Authenticate"]


# [server] / [server.grpc] limits


async def test_a_message_over_max_body_bytes_is_resource_exhausted(
        start_gateway: StartGateway) -> None:
    gw = await start_gateway(server="max_body_bytes = 65536")
    small = await gw.predict.Predict(predict_request("demo", ROWS), timeout=10)
    assert small.outputs["probabilities"]
    rows = np.ones((5000, 4), np.float32).tolist()  # 80 kB of tensor_content
    error = await failure(gw.predict.Predict(predict_request("demo", rows), timeout=10))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "65536" in (error.details() or "")


async def test_streams_beyond_max_concurrent_streams_wait_their_turn(
        start_gateway: StartGateway, standin: TfServingStandIn) -> None:
    gw = await start_gateway(server="[server.grpc]\nmax_concurrent_streams = 2")
    assert (await gw.v2.ServerLive(pb.ServerLiveRequest(), timeout=10)).live  # SETTINGS seen
    standin.pause()
    first = [asyncio.ensure_future(gw.predict.Predict(predict_request("tfdemo", ROWS),
                                                      timeout=30)) for _ in range(6)]
    await wait_until(lambda: standin.waiting == 2)
    async with own_connection(gw.target) as other:
        # Another connection still gets in: the server runs two of the first six because
        # the connection may carry no more, not because it is busy.
        late = asyncio.ensure_future(prediction_service_pb2_grpc.PredictionServiceStub(
            other).Predict(predict_request("tfdemo", ROWS), timeout=30))
        await wait_until(lambda: standin.waiting == 3)
        assert len(standin.calls("Predict")) == 3
        assert not any(call.done() for call in first)
        standin.resume()
        replies = await asyncio.gather(*first, late)
    assert len(replies) == 7 and all(r.outputs for r in replies)
    assert len(standin.calls("Predict")) == 7


async def test_a_client_pinging_too_often_is_sent_away(gw: RunningGateway,
                                                       capfd: pytest.CaptureFixture[str]
                                                       ) -> None:
    polite = gw.channel
    assert (await gw.v2.ServerLive(pb.ServerLiveRequest(), timeout=10)).live
    async with own_connection(gw.target, ("grpc.keepalive_time_ms", 100),
                              ("grpc.keepalive_permit_without_calls", 1),
                              ("grpc.http2.max_pings_without_data", 0)) as pushy:
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(pushy)
        assert (await stub.ServerLive(pb.ServerLiveRequest(), timeout=10)).live
        assert pushy.get_state() == READY
        await wait_until(lambda: pushy.get_state() != READY)  # GOAWAY, connection closed
    if os.environ.get("GRPC_VERBOSITY", "").upper() != "NONE":  # gRPC core's own ERROR line
        assert "too_many_pings" in capfd.readouterr().err
    assert polite.get_state() == READY  # min_ping_interval_s = 10: the default client is fine


async def test_an_idle_connection_is_closed_after_max_connection_idle(
        start_gateway: StartGateway) -> None:
    gw = await start_gateway(server="[server.grpc]\nmax_connection_idle_s = 1")
    assert (await gw.v2.ServerLive(pb.ServerLiveRequest(), timeout=10)).live
    assert gw.channel.get_state() == READY
    await wait_until(lambda: gw.channel.get_state() != READY, within=10)
    assert (await gw.v2.ServerLive(pb.ServerLiveRequest(), timeout=10)).live  # reconnects


async def test_max_connection_age_makes_a_busy_channel_reconnect_without_failing_calls(
        start_gateway: StartGateway) -> None:
    gw = await start_gateway(
        server="[server.grpc]\nmax_connection_age_s = 1\nmax_connection_age_grace_s = 5")
    seen: set[int] = set()
    calls = 0

    async def reconnected() -> bool:
        nonlocal calls
        reply = await gw.predict.Predict(predict_request("demo", ROWS), timeout=10)
        assert reply.outputs["probabilities"]
        calls += 1
        seen.update(client_ports(gw.port))
        return len(seen) >= 2

    await wait_until(reconnected, within=15)
    assert calls > 2
