"""`ModelStreamInfer` on the gateway's gRPC port: every message of a stream is a `ModelInfer` of
its own, answered with its reply or its `error_message` while the stream goes on; messages are
authenticated, authorized and counted as calls are. tests/test_v2_tritonclient.py drives it
with `tritonclient.grpc`'s stream."""

from __future__ import annotations

import gc
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import numpy as np
import pytest

from gateway.metrics import OTHER_MODEL
from protos.inference import grpc_service_pb2 as pb
from protos.inference import grpc_service_pb2_grpc
from tests.auth_support import bearer, claims, hs_provider, sign
from tests.log_support import errors_logged
from tests.test_rest_tfserving import expected_probabilities

ROWS = [[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.0, 2.0]]
AUTH = f"""
[auth]
enabled = true
{hs_provider()}
"""


def demo_request(request_id: str, model: str = "demo", raw: bytes | None = None
                 ) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, id=request_id)
    request.inputs.add(name="x", datatype="FP32", shape=[2, 4])
    request.raw_input_contents.append(np.float32(ROWS).tobytes() if raw is None else raw)
    return request


class Stub(grpc_service_pb2_grpc.GRPCInferenceServiceStub):  # type: ignore[misc]
    """The v2 stub, and the gateway's metrics registry."""

    registry: Any


async def started(make_client: Callable[..., Any], extra: str = "") -> AsyncIterator[Stub]:
    http = await make_client(extra, server="grpc_port = 0")
    server = http.gateway.grpc_server()
    port = await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = Stub(channel)
        stub.registry = http.gateway.metrics.registry
        yield stub
    await server.stop()


@pytest.fixture
async def v2(make_client: Callable[..., Any]) -> AsyncIterator[Stub]:
    async for stub in started(make_client):
        yield stub


@pytest.fixture
async def v2_auth(make_client: Callable[..., Any]) -> AsyncIterator[Stub]:
    async for stub in started(make_client, AUTH):
        yield stub


async def answers(stub: Stub,
                  requests: list[pb.ModelInferRequest], **kwargs: Any
                  ) -> dict[str, pb.ModelStreamInferResponse]:
    """Every answer of one stream, by request id (they may come in any order)."""
    got = [reply async for reply in stub.ModelStreamInfer(iter(requests), timeout=30, **kwargs)]
    by_id = {reply.infer_response.id: reply for reply in got}
    assert len(by_id) == len(got) == len(requests)
    return by_id


async def test_every_message_is_answered_and_a_failure_ends_only_its_own(
        v2: Stub) -> None:
    got = await answers(v2, [demo_request("a"), demo_request("b", model="nope"),
                             demo_request("c", raw=b"\0" * 7), demo_request("d")])
    for ok in ("a", "d"):
        assert got[ok].error_message == ""
        reply = got[ok].infer_response
        assert (reply.model_name, reply.model_version) == ("demo", "1")
        np.testing.assert_allclose(
            np.frombuffer(reply.raw_output_contents[0], "<f4").reshape(2, 3),
            expected_probabilities(ROWS), rtol=1e-6)
    assert got["b"].error_message == "model 'nope' not found"
    assert got["b"].infer_response.model_name == "nope"
    assert got["c"].error_message == "input 'x': 7 raw bytes, shape [2, 4] of FP32 needs 32"
    for model, status, count in (("demo", "OK", 2), (OTHER_MODEL, "NOT_FOUND", 1),
                                 ("demo", "INVALID_ARGUMENT", 1)):  # counted as calls are
        assert v2.registry.get_sample_value("gateway_requests_total", {
            "frontend": "v2-grpc", "model": model, "variant": "", "status": status}) == count


async def test_many_messages_on_one_stream(
        v2: Stub) -> None:
    """More messages than run at once (`STREAM_WINDOW`), each answered once."""
    got = await answers(v2, [demo_request(str(n)) for n in range(150)])
    assert all(reply.error_message == "" for reply in got.values())


async def test_a_stream_needs_a_token_and_each_message_the_predict_scope(
        v2_auth: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await answers(v2_auth, [demo_request("a")])
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED

    def token(scope: str) -> tuple[tuple[str, str]]:
        return (("authorization", bearer(sign(claims(time.time(), scope=scope)))
                 ["Authorization"]),)

    got = await answers(v2_auth, [demo_request("a")], metadata=token("predict"))
    assert got["a"].error_message == ""
    got = await answers(v2_auth, [demo_request("a")], metadata=token("profile"))
    assert got["a"].error_message == \
        "predict on model 'demo' needs scope 'predict' or 'predict:demo'"


async def test_a_stream_the_client_cancels_ends_cleanly(
        v2: Stub, caplog: pytest.LogCaptureFixture) -> None:
    """Cancelled with messages still running: none of them may touch the call after gRPC
    frees it (they once did, from a stream handler left suspended at its `yield`: a crash)."""
    async def endless() -> AsyncIterator[pb.ModelInferRequest]:
        n = 0
        while True:
            yield demo_request(str(n))
            n += 1

    for _ in range(20):
        call = v2.ModelStreamInfer(endless(), timeout=30)
        first = await call.read()
        assert first.error_message == ""
        call.cancel()
        gc.collect()  # what would free a call still in use
    got = await answers(v2, [demo_request("after")])  # the server goes on
    assert got["after"].error_message == ""
    assert not errors_logged(caplog)
