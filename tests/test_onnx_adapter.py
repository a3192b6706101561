"""The ONNX adapter's repository life cycle, through a gateway on a free port."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from aiohttp.test_utils import TestClient

from tests.conftest import put_model
from tests.onnx_models import scaled_demo_bytes
from tests.waiting import wait_until

V2_BODY = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}


async def served_versions(client: TestClient, model: str = "demo") -> dict[str, str]:
    reply = await client.get(f"/v1/models/{model}")
    if reply.status != 200:
        return {}
    statuses = (await reply.json())["model_version_status"]
    return {s["version"]: s["state"] for s in statuses}


async def test_new_version_on_disk_is_swapped_in_without_failing_a_request(
        client: TestClient, repo: Path) -> None:
    before = await (await client.post("/v2/models/demo/infer", json=V2_BODY)).json()
    failures: list[int] = []
    stop = asyncio.Event()

    async def traffic() -> None:
        while not stop.is_set():
            reply = await client.post("/v2/models/demo/infer", json=V2_BODY)
            if reply.status != 200:
                failures.append(reply.status)

    load = asyncio.create_task(traffic())
    put_model(repo, "demo", 2, scaled_demo_bytes(3.0))

    async def v2_serving() -> bool:
        return (await served_versions(client)).get("2") == "AVAILABLE"

    await wait_until(v2_serving)
    stop.set()
    await load
    after = await (await client.post("/v2/models/demo/infer", json=V2_BODY)).json()
    assert failures == []
    assert after["model_version"] == "2" and before["model_version"] == "1"
    assert after["outputs"][0]["data"] != before["outputs"][0]["data"]
    assert (await served_versions(client))["1"] == "END"  # latest policy retires version 1


async def test_broken_version_leaves_the_old_one_serving(client: TestClient, repo: Path) -> None:
    put_model(repo, "demo", 2, b"not an onnx model")

    async def v2_failed() -> bool:
        return (await served_versions(client)).get("2") == "END"

    await wait_until(v2_failed)
    status = (await (await client.get("/v1/models/demo/versions/2")).json())
    assert status["model_version_status"][0]["status"]["error_message"].startswith(
        "not a loadable ONNX model")
    reply = await client.post("/v2/models/demo/infer", json=V2_BODY)
    assert reply.status == 200 and (await reply.json())["model_version"] == "1"


async def test_version_policy_all_and_specific(make_client: Callable[..., object],
                                               repo: Path) -> None:
    put_model(repo, "demo", 2, scaled_demo_bytes(2.0))
    put_model(repo, "multi2", 3, scaled_demo_bytes(2.0))
    put_model(repo, "multi2", 5, scaled_demo_bytes(4.0))
    client: TestClient = await make_client(  # type: ignore[operator]
        '[models.multi2]\nadapter = "local"\nversion_policy = "specific"\nversions = [3]\n',
    )
    assert await served_versions(client, "multi2") == {"3": "AVAILABLE"}
    assert await served_versions(client, "demo") == {"2": "AVAILABLE"}
    await client.close()


async def test_all_versions_and_labels(make_client: Callable[..., object], repo: Path) -> None:
    put_model(repo, "demo", 2, scaled_demo_bytes(2.0))
    client: TestClient = await make_client(
        '[models.ab]\nadapter = "local"\nversion_policy = "all"\n'
        'labels = { stable = 1, canary = 2 }\n')  # type: ignore[operator]
    put_model(repo, "ab", 1, (repo / "demo" / "1" / "model.onnx").read_bytes())
    put_model(repo, "ab", 2, scaled_demo_bytes(2.0))

    async def both() -> bool:
        return await served_versions(client, "ab") == {"1": "AVAILABLE", "2": "AVAILABLE"}

    await wait_until(both)
    stable = await (await client.post("/v1/models/ab/labels/stable:predict",
                                      json={"instances": [[1, 2, 3, 4]]})).json()
    canary = await (await client.post("/v1/models/ab/labels/canary:predict",
                                      json={"instances": [[1, 2, 3, 4]]})).json()
    one = await (await client.post("/v1/models/ab/versions/1:predict",
                                   json={"instances": [[1, 2, 3, 4]]})).json()
    assert stable == one and canary != stable
    await client.close()


async def test_readyz_names_a_configured_model_that_is_missing(
        make_client: Callable[..., object]) -> None:
    client: TestClient = await make_client(
        '[models.ghost]\nadapter = "local"\n')  # type: ignore[operator]
    reply = await client.get("/readyz")
    assert reply.status == 503 and reply.headers["Retry-After"] == "1"
    assert "ghost" in (await reply.json())["error"]
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/v2/health/ready")).status == 503
    await client.close()
