"""Model management over REST: upload, new version, delete, predict."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import numpy as np
from aiohttp.test_utils import TestClient

from tests.onnx_models import demo_bytes, scaled_demo_bytes, slow_bytes
from tests.waiting import wait_until

V2_BODY = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}


async def test_upload_raw_body_then_predict_both_forms(client: TestClient, repo: Path) -> None:
    reply = await client.post("/models?name=fresh", data=demo_bytes(),
                              headers={"Content-Type": "application/octet-stream"})
    assert reply.status == 201
    assert await reply.json() == {"name": "fresh", "version": "1", "state": "AVAILABLE"}
    assert (repo / "fresh" / "1" / "model.onnx").read_bytes() == demo_bytes()
    names = [m["name"] for m in (await (await client.get("/models")).json())["models"]]
    assert "fresh" in names

    v2 = await (await client.post("/models/fresh/predict", json=V2_BODY)).json()
    assert v2["model_name"] == "fresh" and v2["outputs"][0]["shape"] == [1, 3]
    columnar = await (await client.post("/models/fresh/predict",
                                        json={"inputs": {"x": [[1, 2, 3, 4]]}})).json()
    np.testing.assert_allclose(columnar["outputs"][0], v2["outputs"][0]["data"], rtol=1e-6)

    described = await (await client.get("/models/fresh")).json()
    assert described["versions"] == [{"version": "1", "state": "AVAILABLE", "error": ""}]
    assert described["metadata"]["inputs"][0]["name"] == "x"


async def test_upload_multipart(client: TestClient) -> None:
    form = aiohttp.FormData()
    form.add_field("name", "formed")
    form.add_field("file", demo_bytes(), filename="model.onnx",
                   content_type="application/octet-stream")
    reply = await client.post("/models", data=form)
    assert reply.status == 201, await reply.text()
    assert (await client.post("/v2/models/formed/infer", json=V2_BODY)).status == 200


async def test_invalid_uploads_change_nothing(client: TestClient, repo: Path) -> None:
    reply = await client.post("/models?name=junk", data=b"\x08\x01garbage")
    assert reply.status == 400
    assert "not a loadable ONNX model" in (await reply.json())["error"]
    assert (await client.get("/models/junk")).status == 404
    assert not (repo / "junk").exists()

    reply = await client.put("/models/demo", data=b"garbage")
    assert reply.status == 400
    assert sorted(p.name for p in (repo / "demo").iterdir()) == ["1"]
    served = await (await client.post("/v2/models/demo/infer", json=V2_BODY)).json()
    assert served["model_version"] == "1"

    assert (await client.post("/models?name=demo", data=demo_bytes())).status == 409
    assert (await client.post("/models?name=../etc", data=demo_bytes())).status == 400
    assert (await client.post("/models", data=demo_bytes())).status == 400  # no name


async def test_put_new_version_serves_once_loaded(client: TestClient) -> None:
    before = await (await client.post("/v2/models/demo/infer", json=V2_BODY)).json()
    reply = await client.put("/models/demo", data=scaled_demo_bytes(5.0))
    assert reply.status == 201
    assert await reply.json() == {"name": "demo", "version": "2", "state": "AVAILABLE"}
    after = await (await client.post("/v2/models/demo/infer", json=V2_BODY)).json()
    assert after["model_version"] == "2"
    assert after["outputs"][0]["data"] != before["outputs"][0]["data"]
    versions = (await (await client.get("/models/demo")).json())["versions"]
    assert {v["version"]: v["state"] for v in versions} == {"1": "END", "2": "AVAILABLE"}


async def test_delete_lets_in_flight_requests_finish(client: TestClient, repo: Path) -> None:
    body = {"inputs": [{"name": "x", "shape": [1, 1024], "datatype": "FP32",
                        "data": [0.01] * 1024}]}
    adapter = client.gateway.adapters["local"]  # type: ignore[attr-defined]
    batcher = adapter._models["slow"].serving[1].batcher
    in_flight = [asyncio.create_task(client.post("/v2/models/slow/infer", json=body))
                 for _ in range(4)]
    await wait_until(lambda: batcher.depth >= 1)  # one running, more queued
    deleted = await client.delete("/models/slow")
    assert deleted.status == 200 and await deleted.json() == {"name": "slow", "deleted": True}
    replies = await asyncio.gather(*in_flight)
    assert [r.status for r in replies] == [200] * 4
    assert (await client.post("/v2/models/slow/infer", json=body)).status == 404
    assert (await client.delete("/models/slow")).status == 404
    assert not (repo / "slow").exists()


async def test_predict_body_must_have_inputs(client: TestClient) -> None:
    reply = await client.post("/models/demo/predict", json={"instances": [[1, 2, 3, 4]]})
    assert reply.status == 400 and "inputs" in (await reply.json())["error"]


async def test_slow_model_is_slow_enough_for_the_queue_tests() -> None:
    from adapters.onnx.session import load_session

    session = load_session(slow_bytes(), intra_op_threads=1, inter_op_threads=1)
    assert session.outputs[0].shape == (-1, 1024)
