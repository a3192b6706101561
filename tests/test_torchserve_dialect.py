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


async def test_unknown_models_and_versions_are_404_in_torchserves_words(
        gw: RunningGateway) -> None:
    cases = [("/predictions/nope", "ModelNotFoundException", "Model not found: nope"),
             ("/predictions/nope/1", "ModelNotFoundException", "Model not found: nope"),
             ("/predictions/demo/7", "ModelVersionNotFoundException",
              "Model version: 7 does not exist for model: demo")]
    for path, kind, message in cases:
        response = await gw.http.post(path, json=ROWS)
        assert response.status == 404, path
        assert await response.json() == {"code": 404, "type": kind, "message": message}


async def test_failures_answer_in_torchserves_shape(gw: RunningGateway) -> None:
    """`{"code", "type", "message"}` as TorchServe 0.12 writes them, `type` its exception class
    where TorchServe has the same failure; the other dialects keep `{"error"}`."""
    cases = [("POST", "/predictions/nope", 404, "ModelNotFoundException", "nope"),
             ("POST", "/predictions/demo/1/extra", 404, "ResourceNotFoundException",
              "no such endpoint"),
             ("GET", "/explanations", 404, "ResourceNotFoundException", "no such endpoint"),
             ("PUT", "/explanations/demo/1/extra", 404, "ResourceNotFoundException",
              "no such endpoint")]
    for method, path, status, kind, fragment in cases:
        response = await gw.http.request(method, path, json=ROWS)
        reply = await response.json()
        assert response.status == status, path
        assert set(reply) == {"code", "type", "message"}, reply
        assert (reply["code"], reply["type"]) == (status, kind), path
        assert fragment in reply["message"], reply
    other = await gw.http.post("/v2/models/nope/infer", json={"inputs": []})
    assert set(await other.json()) == {"error"}


async def test_every_method_predicts_and_the_door_describes_itself(gw: RunningGateway) -> None:
    """TorchServe answers any method on its inference paths alike, explanations included (a
    backend that is not TorchServe has no handler to explain: it predicts)."""
    for method, path in (("PUT", "/predictions/demo"), ("GET", "/predictions/demo/1"),
                         ("POST", "/explanations/demo")):
        response = await gw.http.request(method, path, json={"x": ROWS})
        assert response.status == 200, (method, path, await response.text())
        np.testing.assert_allclose((await response.json())["probabilities"],
                                   stable_answer(ROWS), rtol=1e-6)
    for method, path in (("OPTIONS", "/"), ("GET", "/api-description")):
        response = await gw.http.request(method, path)
        assert response.status == 200
        description = await response.json()
        assert description["openapi"] == "3.0.1"
        assert {"/ping", "/predictions/{model_name}", "/explanations/{model_name}",
                "/predictions/{model_name}/{model_version}"} <= set(description["paths"])


async def test_ping_follows_the_gateways_readiness(start_gateway: StartGateway) -> None:
    healthy = await (await start_gateway()).http.get("/ping")
    assert (healthy.status, await healthy.json()) == (200, {"status": "Healthy"})
    dead = f'["127.0.0.1:{free_port()}"]'
    gw = await start_gateway(textwrap.dedent(f"""
        [adapters.gone]
        kind = "torchserve"
        protocol = "grpc"
        endpoints = {dead}
        management_endpoints = {dead}

        [models.ghost]
        adapter = "gone"
        """))
    # a remote backend down is down for every replica: this one still serves the rest
    remote_down = await gw.http.get("/ping")
    assert (remote_down.status, await remote_down.json()) == (200, {"status": "Healthy"})
    gw = await start_gateway('[models.ghost]\nadapter = "local"\n')  # one it runs: missing
    unhealthy = await gw.http.get("/ping")
    assert (unhealthy.status, await unhealthy.json()) == (500, {"status": "Unhealthy"})
