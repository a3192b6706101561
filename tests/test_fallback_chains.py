"""Mixed fallback chains with real backends: a route whose first target passes the client's
body (TorchServe) and whose fallback takes tensors (the in-process ONNX model), the other way
round, and chains through every kind (TF Serving, TorchServe, v2, ONNX) ending at the in-process
model or at a real Triton; each target gets the request prepared for itself. The dead targets
are real adapters whose endpoints nothing listens on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from aiohttp.test_utils import TestClient

from tests.policy_support import policies_section, write_policy
from tests.servers.tfserving_standin import dead_address, stable_answer, tfserving_config
from tests.servers.torchserve_server import TorchServe, tiny_answer, torchserve_config
from tests.servers.triton_server import Triton, affine_answer
from tests.test_routing_rest import MakeClient, metric

pytest_plugins = ["tests.servers.fixtures", "tests.servers.torchserve", "tests.servers.triton"]

ROWS = [[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.0, 2.0]]
POLICY = """
[[routes]]
name = "demo-ts-first"
model = "demo"
target = { adapter = "tsdead" }
[[routes.fallbacks]]
adapter = "local"
variant = "onnx"

[[routes]]
name = "tiny-tf-first"
model = "tiny"
target = { adapter = "tfdead" }
[[routes.fallbacks]]
adapter = "ts"
variant = "torchserve"
"""


def dead_torchserve(adapter: str) -> str:
    dead = dead_address()
    return "\n".join([
        f"[adapters.{adapter}]", 'kind = "torchserve"', 'protocol = "grpc"',
        f"endpoints = {json.dumps([dead])}",
        f"management_endpoints = {json.dumps([dead])}", "connect_timeout_s = 0.2", ""])


async def chained(make_client: MakeClient, tmp_path: Path, torchserve: TorchServe
                  ) -> TestClient:
    write_policy(tmp_path / "policies" / "p.toml", POLICY)
    config = (torchserve_config(torchserve, models=()) + dead_torchserve("tsdead")
              + tfserving_config(dead_address(), models=(), adapter="tfdead",
                                 connect_timeout_s=0.2)
              + policies_section(tmp_path / "policies"))
    return await make_client(config)  # type: ignore[operator, no-any-return]


async def test_a_torchserve_body_falls_back_to_onnx_decoded_with_its_signature(
        make_client: MakeClient, tmp_path: Path, torchserve: TorchServe) -> None:
    client = await chained(make_client, tmp_path, torchserve)
    reply = await client.post("/predictions/demo", json={"x": ROWS})
    assert reply.status == 200, await reply.text()
    assert reply.headers["x-gateway-variant"] == "onnx"
    body = await reply.json()
    [output] = body.values()
    np.testing.assert_allclose(output, stable_answer(ROWS), rtol=1e-5)
    # the other doors take the same chain
    tf = await client.post("/v1/models/demo:predict", json={"instances": ROWS})
    assert tf.status == 200, await tf.text()
    np.testing.assert_allclose((await tf.json())["predictions"], stable_answer(ROWS), rtol=1e-5)
    assert metric(client, "gateway_route_fallbacks_total", route="demo-ts-first",
                  adapter="tsdead") == 2


async def test_a_tensor_target_falls_back_to_torchserve_with_the_clients_body(
        make_client: MakeClient, tmp_path: Path, torchserve: TorchServe) -> None:
    client = await chained(make_client, tmp_path, torchserve)
    for body in ({"x": ROWS}, ROWS):  # the handler takes either; ONNX would refuse the list
        reply = await client.post("/predictions/tiny", json=body)
        assert reply.status == 200, await reply.text()
        assert reply.headers["x-gateway-variant"] == "torchserve"
        # a handler's reply as TorchServe sends it: no Content-Type
        np.testing.assert_allclose(json.loads(await reply.read())["probabilities"],
                                   tiny_answer(ROWS), rtol=1e-6)
    flat = [value for row in ROWS for value in row]
    v2 = await client.post("/v2/models/tiny/infer", json={"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [2, 4], "data": flat}]})
    assert v2.status == 200, await v2.text()
    [output] = (await v2.json())["outputs"]
    np.testing.assert_allclose(np.reshape(output["data"], output["shape"]), tiny_answer(ROWS),
                               rtol=1e-6)


EVERY_KIND = """
[[routes]]
name = "demo-every-kind"
model = "demo"
target = { adapter = "v2dead" }
[[routes.fallbacks]]
adapter = "tfdead"
[[routes.fallbacks]]
adapter = "tsdead"
[[routes.fallbacks]]
adapter = "local"
variant = "onnx"

[[routes]]
name = "affine-every-kind"
model = "affine"
target = { adapter = "tsdead" }
[[routes.fallbacks]]
adapter = "tfdead"
[[routes.fallbacks]]
adapter = "triton"
variant = "triton"
"""


async def test_chains_through_every_kind_end_where_a_target_answers(
        make_client: MakeClient, tmp_path: Path, triton: Triton) -> None:
    write_policy(tmp_path / "policies" / "p.toml", EVERY_KIND)
    config = (dead_torchserve("tsdead")
              + tfserving_config(dead_address(), models=(), adapter="tfdead",
                                 connect_timeout_s=0.2)
              + "\n".join(["[adapters.v2dead]", 'kind = "v2"',
                           f'endpoints = ["{dead_address()}"]', "connect_timeout_s = 0.2", ""])
              + triton.gateway_toml("triton", {})
              + policies_section(tmp_path / "policies"))
    client: TestClient = await make_client(config)  # type: ignore[operator]
    for path, body, read in (
            ("/predictions/demo", {"x": ROWS}, lambda r: next(iter(r.values()))),
            ("/v1/models/demo:predict", {"instances": ROWS}, lambda r: r["predictions"])):
        reply = await client.post(path, json=body)
        assert reply.status == 200, await reply.text()
        assert reply.headers["x-gateway-variant"] == "onnx"
        np.testing.assert_allclose(read(json.loads(await reply.read())), stable_answer(ROWS),
                                   rtol=1e-5)
    for adapter in ("v2dead", "tfdead", "tsdead"):
        assert metric(client, "gateway_route_fallbacks_total", route="demo-every-kind",
                      adapter=adapter) == 2
    flat = [value for row in ROWS for value in row]
    for path, body, read in (
            ("/predictions/affine", {"x": ROWS}, lambda r: r["y"]),
            ("/v2/models/affine/infer",
             {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "data": flat}]},
             lambda r: np.reshape(r["outputs"][0]["data"], r["outputs"][0]["shape"]))):
        reply = await client.post(path, json=body)
        assert reply.status == 200, await reply.text()
        assert reply.headers["x-gateway-variant"] == "triton"
        np.testing.assert_allclose(read(json.loads(await reply.read())), affine_answer(ROWS))
    for adapter in ("tsdead", "tfdead"):
        assert metric(client, "gateway_route_fallbacks_total", route="affine-every-kind",
                      adapter=adapter) == 2
