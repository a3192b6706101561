"""Open Inference Protocol v2 REST dialect against a gateway on a free port."""

from __future__ import annotations

import numpy as np
import pytest
from aiohttp.test_utils import TestClient

from tests.test_rest_tfserving import expected_probabilities


async def test_server_endpoints(client: TestClient) -> None:
    metadata = await (await client.get("/v2")).json()
    assert metadata["name"] == "inference-gateway" and "version" in metadata
    assert (await client.get("/v2/health/live")).status == 200
    assert (await client.get("/v2/health/ready")).status == 200


async def test_model_metadata_and_ready(client: TestClient) -> None:
    for path in ("/v2/models/demo", "/v2/models/demo/versions/1"):
        metadata = await (await client.get(path)).json()
        assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
        assert metadata["outputs"] == [{"name": "probabilities", "datatype": "FP32",
                                        "shape": [-1, 3]}]
        assert metadata["versions"] == ["1"]
        assert (await client.get(path + "/ready")).status == 200
    assert (await client.get("/v2/models/nope/ready")).status == 404


@pytest.mark.parametrize("data", [[1, 2, 3, 4, 0, 0, 0, 1], [[1, 2, 3, 4], [0, 0, 0, 1]]])
async def test_infer_flat_or_nested(client: TestClient, data: list[object]) -> None:
    reply = await client.post("/v2/models/demo/infer", json={
        "id": "r-1", "inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": data}]})
    assert reply.status == 200
    document = await reply.json()
    assert document["id"] == "r-1" and document["model_name"] == "demo"
    assert document["model_version"] == "1"
    [output] = document["outputs"]
    assert output["name"] == "probabilities" and output["datatype"] == "FP32"
    assert output["shape"] == [2, 3]
    np.testing.assert_allclose(np.reshape(output["data"], (2, 3)),
                               expected_probabilities([[1, 2, 3, 4], [0, 0, 0, 1]]), rtol=1e-5)


async def test_infer_bytes_int_and_requested_outputs(client: TestClient) -> None:
    reply = await client.post("/v2/models/multi/versions/1/infer", json={
        "inputs": [{"name": "a", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]},
                   {"name": "b", "shape": [1, 1], "datatype": "INT64", "data": [5]},
                   {"name": "s", "shape": [1], "datatype": "BYTES", "data": ["héllo"]}],
        "outputs": [{"name": "s_bytes"}]})
    assert reply.status == 200, await reply.text()
    outputs = (await reply.json())["outputs"]
    assert outputs == [{"name": "s_bytes", "datatype": "BYTES", "shape": [1], "data": ["héllo"]}]


@pytest.mark.parametrize(("body", "status", "fragment"), [
    ({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}]},
     400, "expected datatype FP32, got FP64"),
    ({"inputs": [{"name": "x", "shape": [1, 5], "datatype": "FP32", "data": [1, 2, 3, 4, 5]}]},
     400, "expected shape [-1, 4], got [1, 5]"),
    ({"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]},
     400, "needs 8 elements"),
    ({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FLOAT", "data": [1, 2, 3, 4]}]},
     400, "unknown datatype"),
    ({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}],
      "outputs": [{"name": "logits"}]}, 400, "no output named 'logits'"),
    ({"inputs": []}, 400, "non-empty list"),
])
async def test_infer_errors(client: TestClient, body: dict[str, object], status: int,
                            fragment: str) -> None:
    reply = await client.post("/v2/models/demo/infer", json=body)
    assert reply.status == status
    assert fragment in (await reply.json())["error"]


async def test_unknown_model_and_version(client: TestClient) -> None:
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    assert (await client.post("/v2/models/nope/infer", json=body)).status == 404
    assert (await client.post("/v2/models/demo/versions/9/infer", json=body)).status == 404
