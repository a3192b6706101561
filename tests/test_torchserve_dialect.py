"""The TorchServe dialect (`POST /predictions/{m}[/{v}]`, `GET /ping`) in front of backends
that are not TorchServe: the in-process ONNX `demo` and the TF Serving stand-in's `tfdemo`
take the body as a JSON object of inputs (or one unnamed value) and answer one of outputs."""

from __future__ import annotations

import textwrap

import numpy as np

from tests.servers.running_gateway import RunningGateway, StartGateway
from tests.servers.tfserving_standin import canary_answer, stable_answer
from tests.servers.torchserve_server import free_port

pytest_plugins = ["tests.servers.fixtures"]

ROWS = [[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.0, 2.0]]


async def test_demo_takes_named_or_unnamed_json_and_answers_named_outputs(
        gw: RunningGateway) -> None:
    for path in ("/predictions/demo", "/predictions/demo/1"):
        for body in ({"x": ROWS}, ROWS):
            response = await gw.http.post(path, json=body)
            assert response.status == 200, await response.text()
            assert response.content_type == "application/json"
            reply = await response.json()
            assert list(reply) == ["probabilities"]
            np.testing.assert_allclose(reply["probabilities"], stable_answer(ROWS), rtol=1e-6)


async def test_a_tfserving_backend_answers_through_the_dialect(gw: RunningGateway) -> None:
    response = await gw.http.post("/predictions/tfdemo/2", json={"x": ROWS})
    assert response.status == 200, await response.text()
    reply = await response.json()
    assert list(reply) == ["cut"]  # the canary's output name
    np.testing.assert_allclose(reply["cut"], canary_answer(ROWS), rtol=1e-6)


async def test_bodies_the_target_cannot_type_are_400(gw: RunningGateway) -> None:
    cases = [(b"not json", "malformed JSON"), (b'{"y": [[1, 2, 3, 4]]}', "no input named 'y'"),
             (b'[["a", "b", "c", "d"]]', "expected FP32")]
    for body, expected in cases:
        response = await gw.http.post("/predictions/demo", data=body)
        assert response.status == 400, body
        reply = await response.json()  # TorchServe's shape
        assert (reply["code"], reply["type"]) == (400, "BadRequestException"), body
        assert expected in reply["message"], body


async def test_unknown_models_and_versions_are_404(gw: RunningGateway) -> None:
    for path in ("/predictions/nope", "/predictions/demo/7"):
        response = await gw.http.post(path, json=ROWS)
        assert response.status == 404, path
        reply = await response.json()
        assert (reply["code"], reply["type"]) == (404, "ModelNotFoundException"), path


async def test_failures_answer_in_torchserves_shape(gw: RunningGateway) -> None:
    """`{"code", "type", "message"}` as TorchServe 0.12 writes them, `type` its exception class
    where TorchServe has the same failure; the other dialects keep `{"error"}`."""
    cases = [("POST", "/predictions/nope", 404, "ModelNotFoundException", "nope"),
             ("POST", "/predictions/demo/1/extra", 404, "ResourceNotFoundException",
              "no such endpoint"),
             ("GET", "/predictions/demo", 405, "MethodNotAllowedException", "method GET"),
             ("POST", "/ping", 405, "MethodNotAllowedException", "method POST")]
    for method, path, status, kind, fragment in cases:
        response = await gw.http.request(method, path, json=ROWS)
        reply = await response.json()
        assert response.status == status, path
        assert set(reply) == {"code", "type", "message"}, reply
        assert (reply["code"], reply["type"]) == (status, kind), path
        assert fragment in reply["message"], reply
    other = await gw.http.post("/v2/models/nope/infer", json={"inputs": []})
    assert set(await other.json()) == {"error"}


async def test_ping_follows_the_gateways_readiness(start_gateway: StartGateway) -> None:
    healthy = await (await start_gateway()).http.get("/ping")
    assert (healthy.status, await healthy.json()) == (200, {"status": "Healthy"})
    dead = f'["127.0.0.1:{free_port()}"]'
    gw = await start_gateway(textwrap.dedent(f"""
        [adapters.gone]
        kind = "torchserve"
        endpoints = {dead}
        management_endpoints = {dead}

        [models.ghost]
        adapter = "gone"
        """))
    unhealthy = await gw.http.get("/ping")
    assert (unhealthy.status, await unhealthy.json()) == (500, {"status": "Unhealthy"})
