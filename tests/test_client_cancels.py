"""Clients that give up on requests in flight: a gRPC call cancelled, an HTTP connection closed
before its answer. Neither may leave an in-flight slot or a batch queue place taken, log an
error, or disturb the calls that follow; each is counted (gRPC `CANCELLED`, HTTP 499)."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from protos.inference import grpc_service_pb2 as pb
from tests.log_support import errors_logged
from tests.servers.running_gateway import RunningGateway, StartGateway
from tests.waiting import wait_until

pytest_plugins = ["tests.servers.fixtures"]

CALLS = 16
SLOW_MODEL = f"""
[models.slow]
adapter = "local"

[models.slow.batching]
max_batch_size = 1
max_queue_size = {CALLS}
"""
ROWS = np.full((8, 1024), 0.01, "<f4")  # one call keeps the slow model busy a while


def slow_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="slow")
    request.inputs.add(name="x", datatype="FP32", shape=list(ROWS.shape))
    request.raw_input_contents.append(ROWS.tobytes())
    return request


def sample(gw: RunningGateway, name: str, **labels: str) -> float:
    registry = gw.http.gateway.metrics.registry  # type: ignore[attr-defined]
    return float(registry.get_sample_value(name, labels) or 0.0)


def calls_counted(gw: RunningGateway, status: str) -> float:
    return sample(gw, "gateway_requests_total", frontend="v2-grpc", model="slow", variant="",
                  status=status)


def settled(gw: RunningGateway) -> bool:
    """Nothing in flight and nothing queued for the slow model."""
    return (sample(gw, "gateway_inflight_requests") == 0
            and sample(gw, "gateway_batch_queue_depth", model="slow", version="1") == 0)


async def test_grpc_calls_cancelled_in_flight_are_counted_and_free_their_places(
        start_gateway: StartGateway, caplog: pytest.LogCaptureFixture) -> None:
    gw = await start_gateway(SLOW_MODEL)
    calls = [gw.v2.ModelInfer(slow_request(), timeout=60) for _ in range(CALLS)]
    # every call has reached the gateway: answered already, or in flight there
    await wait_until(lambda: calls_counted(gw, "OK")
                     + sample(gw, "gateway_inflight_requests") == CALLS, within=30)
    for call in calls:
        call.cancel()
    await wait_until(lambda: settled(gw), within=30)
    cancelled, answered = calls_counted(gw, "CANCELLED"), calls_counted(gw, "OK")
    assert cancelled >= 1 and cancelled + answered == CALLS  # each counted once
    assert sample(gw, "gateway_errors_total", frontend="v2-grpc", status="CANCELLED",
                  error="ClientCancelled") == cancelled
    # every place is free again: a full queue's worth of calls is served
    replies = await asyncio.gather(*(gw.v2.ModelInfer(slow_request(), timeout=60)
                                     for _ in range(CALLS)))
    assert [reply.model_name for reply in replies] == ["slow"] * CALLS
    assert not errors_logged(caplog)


async def test_http_requests_whose_clients_hang_up_free_their_places(
        start_gateway: StartGateway, caplog: pytest.LogCaptureFixture) -> None:
    gw = await start_gateway(SLOW_MODEL)
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(ROWS.shape),
                        "data": ROWS.ravel().tolist()}]}
    requests = [asyncio.ensure_future(gw.http.post("/v2/models/slow/infer", json=body))
                for _ in range(CALLS)]
    def reached() -> bool:  # every request has reached the gateway
        return sample(gw, "gateway_requests_total", frontend="v2", model="slow", variant="",
                      status="200") + sample(gw, "gateway_inflight_requests") == CALLS

    await wait_until(reached, within=30)
    for request in requests:
        request.cancel()  # the client closes its connection
    await asyncio.gather(*requests, return_exceptions=True)
    await wait_until(lambda: settled(gw), within=60)
    gone = sample(gw, "gateway_requests_total", frontend="v2", model="slow", variant="",
                  status="499")  # nginx's "Client Closed Request"
    assert gone >= 1 and gone == sample(gw, "gateway_errors_total", frontend="v2",
                                        status="499", error="ClientCancelled")
    replies = await asyncio.gather(*(gw.http.post("/v2/models/slow/infer", json=body)
                                     for _ in range(4)))
    assert [reply.status for reply in replies] == [200] * 4
    assert not errors_logged(caplog)


async def test_a_cancel_before_the_message_is_read_costs_nothing(
        gw: RunningGateway, caplog: pytest.LogCaptureFixture) -> None:
    """Calls cancelled as soon as they are sent, many times over: the server goes on."""
    for _ in range(5):
        calls = [gw.v2.ModelInfer(slow_request(), timeout=60) for _ in range(20)]
        for call in calls:
            call.cancel()
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) or (
            isinstance(r, grpc.aio.AioRpcError) and r.code() == grpc.StatusCode.CANCELLED)
            for r in results), results
    reply = await gw.v2.ModelReady(pb.ModelReadyRequest(name="demo"), timeout=10)
    assert reply.ready
    await wait_until(lambda: sample(gw, "gateway_inflight_requests") == 0)
    assert not errors_logged(caplog)
