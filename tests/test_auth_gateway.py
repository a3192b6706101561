"""Auth through a real gateway: REST dialects (TF Serving, v2, /models) and the gRPC front door
answer 401 with the challenge header and a JSON (or gRPC status) error, 403 without the scope."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from aiohttp.test_utils import TestClient

from gateway.auth.jwt_authenticator import JwtAuthenticator
from protos.tensorflow_serving.apis import (
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
)
from tests.auth_support import bearer, claims, hs_provider, sign
from tests.onnx_models import demo_bytes
from tests.waiting import wait_until

AUTH = f"""
[auth]
enabled = true
{hs_provider()}
"""
TF_BODY = {"instances": [[1, 2, 3, 4]]}
V2_BODY = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}


def headers(scope: str, **overrides: Any) -> dict[str, str]:
    return bearer(sign(claims(time.time(), scope=scope, **overrides)))


@pytest.fixture
async def client(make_client: Callable[..., Any]) -> TestClient:
    client: TestClient = await make_client(AUTH)
    await wait_until(lambda: _ready(client))
    return client


async def _ready(client: TestClient) -> bool:
    return (await client.get("/readyz")).status == 200


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/v1/models/demo:predict", TF_BODY),
    ("GET", "/v1/models/demo", None),
    ("POST", "/v2/models/demo/infer", V2_BODY),
    ("GET", "/v2/models/demo", None),
    ("GET", "/models", None),
    ("POST", "/models/demo/predict", V2_BODY),
])
async def test_without_a_token_every_model_route_is_401(client: TestClient, method: str,
                                                        path: str, body: Any) -> None:
    reply = await client.request(method, path, json=body)
    assert reply.status == 401
    assert reply.headers["WWW-Authenticate"] == 'Bearer realm="gateway"'
    assert await reply.json() == {"error": "a bearer token is required"}


async def test_a_bad_token_is_401_with_the_reason(client: TestClient) -> None:
    reply = await client.post("/v1/models/demo:predict", json=TF_BODY,
                              headers=headers("predict", aud="someone-else"))
    assert reply.status == 401
    assert reply.headers["WWW-Authenticate"] == (
        'Bearer realm="gateway", error="invalid_token", '
        'error_description="token is not meant for this audience"')
    assert await reply.json() == {"error": "token is not meant for this audience"}
    authenticator = client.gateway.pipeline._authenticator  # type: ignore[attr-defined]
    assert isinstance(authenticator, JwtAuthenticator)
    assert authenticator.reasons == {"bad_audience": 1}


async def test_the_predict_scope_predicts_and_reads(client: TestClient) -> None:
    auth = headers("predict")
    tf = await client.post("/v1/models/demo:predict", json=TF_BODY, headers=auth)
    assert tf.status == 200 and len((await tf.json())["predictions"]) == 1
    v2 = await client.post("/v2/models/demo/infer", json=V2_BODY, headers=auth)
    assert v2.status == 200 and (await v2.json())["model_name"] == "demo"
    for path in ("/v1/models/demo", "/v1/models/demo/metadata", "/v2/models/demo", "/models"):
        assert (await client.get(path, headers=auth)).status == 200, path


async def test_without_the_scope_predict_is_403(client: TestClient) -> None:
    reply = await client.post("/v2/models/demo/infer", json=V2_BODY,
                              headers=headers("profile"))
    assert reply.status == 403
    assert await reply.json() == {
        "error": "predict on model 'demo' needs scope 'predict' or 'predict:demo'"}
    assert 'error="insufficient_scope"' in reply.headers["WWW-Authenticate"]


async def test_a_model_qualified_scope_grants_that_model_only(client: TestClient) -> None:
    auth = headers("predict:demo")
    assert (await client.post("/v1/models/demo:predict", json=TF_BODY,
                              headers=auth)).status == 200
    assert (await client.get("/v2/models/demo", headers=auth)).status == 200
    multi = await client.post("/v2/models/multi/infer", json=V2_BODY, headers=auth)
    assert multi.status == 403
    assert "predict:multi" in (await multi.json())["error"]
    assert (await client.get("/models", headers=auth)).status == 403


async def test_managing_models_needs_admin(client: TestClient) -> None:
    upload = {"Content-Type": "application/octet-stream"}
    denied = await client.post("/models?name=fresh", data=demo_bytes(),
                               headers={**upload, **headers("predict")})
    assert denied.status == 403
    assert await denied.json() == {"error": "manage on model 'fresh' needs scope 'admin' "
                                            "or 'admin:fresh'"}
    assert (await client.delete("/models/demo", headers=headers("predict"))).status == 403
    created = await client.post("/models?name=fresh", data=demo_bytes(),
                                headers={**upload, **headers("admin")})
    assert created.status == 201, await created.text()


async def test_operations_endpoints_stay_open(client: TestClient) -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/v2/health/live"):
        assert (await client.get(path)).status == 200, path


async def test_grpc_reads_the_authorization_metadata(make_client: Callable[..., Any]) -> None:
    client: TestClient = await make_client(AUTH, server="grpc_port = 0")
    await wait_until(lambda: _ready(client))
    server = client.gateway.grpc_server()  # type: ignore[attr-defined]
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus
            request = get_model_status_pb2.GetModelStatusRequest(
                model_spec=model_pb2.ModelSpec(name="demo"))
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await status(request)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert caught.value.details() == "a bearer token is required"
            assert ("www-authenticate", 'Bearer realm="gateway"') in tuple(
                caught.value.trailing_metadata() or ())
            token = headers("predict")["Authorization"]
            reply = await status(request, metadata=(("authorization", token),))
            assert [s.version for s in reply.model_version_status] == [1]
            unscoped = headers("profile")["Authorization"]
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await status(request, metadata=(("authorization", unscoped),))
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await server.stop()
