"""Model management over REST: upload, new version, delete, predict."""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Callable
from pathlib import Path

import aiohttp
import numpy as np
from aiohttp.test_utils import TestClient

from adapters.batching import DynamicBatcher
from gateway.types import Tensors
from tests.onnx_models import (
    demo_bytes,
    memory_bomb_bytes,
    scaled_demo_bytes,
    shape_from_input_bytes,
    slow_bytes,
    slow_warm_up_bytes,
)
from tests.processes import PeakRss
from tests.waiting import wait_until

MiB = 1024**2

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


def names_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def hold_batches(batcher: DynamicBatcher) -> tuple[threading.Event, list[int]]:
    """Batches of `batcher` wait for the returned event before they run; the list counts the
    rows of each batch that started."""
    release, started = threading.Event(), []
    run = batcher._run

    def held(inputs: Tensors) -> Tensors:
        started.append(len(next(iter(inputs.values()))))
        release.wait(30)
        return run(inputs)

    batcher._run = held
    return release, started


async def test_delete_lets_in_flight_requests_finish(client: TestClient, repo: Path) -> None:
    body = {"inputs": [{"name": "x", "shape": [1, 1024], "datatype": "FP32",
                        "data": [0.01] * 1024}]}
    adapter = client.gateway.adapters["local"]  # type: ignore[attr-defined]
    batcher = adapter._models["slow"].serving[1].batcher
    release, started = hold_batches(batcher)
    in_flight = [asyncio.create_task(client.post("/v2/models/slow/infer", json=body))
                 for _ in range(4)]
    # Every request is in the batcher: in the batch that waits to run, or queued behind it.
    await wait_until(lambda: sum(started) + batcher.depth == 4)
    deleting = asyncio.create_task(client.delete("/models/slow"))
    await wait_until(lambda: not adapter.serves("slow"))
    assert (await client.post("/v2/models/slow/infer", json=body)).status == 404
    assert not any(task.done() for task in in_flight) and not deleting.done()

    release.set()
    deleted = await deleting
    assert deleted.status == 200 and await deleted.json() == {"name": "slow", "deleted": True}
    replies = await asyncio.gather(*in_flight)
    assert [r.status for r in replies] == [200] * 4
    assert (await client.delete("/models/slow")).status == 404
    assert not (repo / "slow").exists()


async def test_a_memory_bomb_upload_is_refused_and_costs_the_gateway_nothing(
        client: TestClient, repo: Path) -> None:
    """A ~200-byte graph that fills 3.3 GB on every run, one row or many (the default limits:
    load_memory_bytes and run_memory_bytes of 2 GiB)."""
    bomb = memory_bomb_bytes()
    assert len(bomb) < 250
    with PeakRss() as rss:
        created = await client.post("/models?name=bomb", data=bomb)
        replaced = await client.put("/models/demo", data=bomb)
    for reply in (created, replaced):
        assert reply.status == 400
        assert (await reply.json())["error"] == (
            "rejected upload: loading and warming up the model on one row needs more than "
            "run_memory_bytes = 2147483648 bytes (2.0 GiB) of ONNX Runtime memory")
    assert rss.rise < 50 * MiB
    assert (await client.get("/models/bomb")).status == 404
    assert names_in(repo) == ["demo", "multi", "slow"] and names_in(repo / "demo") == ["1"]


async def test_the_process_memory_limit_refuses_what_the_arena_cap_does_not_see(
        make_client: Callable[..., object]) -> None:
    client: TestClient = await make_client(  # type: ignore[operator]
        adapter=f"load_memory_bytes = {256 * MiB}\nrun_memory_bytes = 0")
    with PeakRss() as rss:
        reply = await client.post("/models?name=bomb", data=memory_bomb_bytes())
    assert reply.status == 400
    assert (await reply.json())["error"] == (
        "rejected upload: loading and warming up the model on one row needs more than "
        "load_memory_bytes = 268435456 bytes (256 MiB)")
    assert rss.rise < 50 * MiB


async def test_an_upload_whose_warm_up_outlasts_the_timeout_is_refused(
        make_client: Callable[..., object], repo: Path) -> None:
    client: TestClient = await make_client(adapter="load_timeout_s = 1")  # type: ignore[operator]
    reply = await client.post("/models?name=sluggish", data=io.BytesIO(slow_warm_up_bytes()))
    assert reply.status == 400
    assert (await reply.json())["error"] == (
        "rejected upload: loading and warming up the model took longer than "
        "load_timeout_s = 1 s")
    assert names_in(repo) == ["demo", "multi", "slow"]  # no staged file left behind


async def test_a_request_needing_more_than_run_memory_bytes_is_refused(
        make_client: Callable[..., object]) -> None:
    """Memory that depends on the values a client sends escapes the warm-up; the arena cap
    bounds it per call."""
    client: TestClient = await make_client(  # type: ignore[operator]
        adapter=f"run_memory_bytes = {64 * MiB}")
    assert (await client.post("/models?name=sized", data=shape_from_input_bytes())).status == 201

    def request(rows: float, cols: float) -> dict[str, object]:
        return {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32",
                            "data": [rows, cols]}]}

    with PeakRss() as rss:
        refused = await client.post("/v2/models/sized/infer", json=request(20_000, 4_096))
    assert refused.status == 413  # 328 MB asked for
    assert (await refused.json())["error"] == (
        "running this batch needs more than the model's run_memory_bytes = 67108864 bytes of "
        "ONNX Runtime memory")
    assert rss.rise < 50 * MiB
    served = await client.post("/v2/models/sized/infer", json=request(100, 100))
    assert served.status == 200 and (await served.json())["outputs"][0]["data"] == [
        10_100.0, 10_100.0]


async def test_predict_body_must_have_inputs(client: TestClient) -> None:
    reply = await client.post("/models/demo/predict", json={"instances": [[1, 2, 3, 4]]})
    assert reply.status == 400 and "inputs" in (await reply.json())["error"]


async def test_slow_model_is_slow_enough_for_the_queue_tests() -> None:
    from adapters.onnx.session import SessionSettings, load_session

    session = load_session(slow_bytes(), SessionSettings())
    assert session.outputs[0].shape == (-1, 1024)
