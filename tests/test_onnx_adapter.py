"""The ONNX adapter's repository life cycle, through a gateway on a free port."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from adapters.onnx.adapter import OnnxAdapter
from adapters.onnx.config import OnnxAdapterConfig
from adapters.onnx.probe import checks_in_flight
from gateway.app import Gateway
from gateway.config import ConfigError, load_config
from tests.conftest import WriteConfig, put_model
from tests.onnx_models import (
    demo_bytes,
    memory_bomb_bytes,
    multi_io_bytes,
    scaled_demo_bytes,
    slow_warm_up_bytes,
)
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
    verbose = await client.get("/readyz?verbose")
    assert verbose.status == 503 and verbose.headers["Retry-After"] == "1"
    report = await verbose.json()
    assert report["status"] == "not ready" and "ghost" in report["reason"]
    assert report["backends"]["local"]["models"]["ghost"]["ready"] is False
    assert report["backends"]["local"]["models"]["demo"] == {"ready": True}
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/v2/health/ready")).status == 503
    await client.close()


async def ready(client: TestClient) -> tuple[int, str]:
    reply = await client.get("/readyz")
    return reply.status, (await reply.json()).get("error", "")


async def test_the_gateway_serves_ready_models_while_others_load(
        aiohttp_client: Callable[..., object], write_config: WriteConfig, repo: Path) -> None:
    put_model(repo, "sluggish", 1, slow_warm_up_bytes())  # about a minute of warm-up
    gateway = Gateway(load_config(write_config()))
    client: TestClient = await aiohttp_client(gateway.http_app())  # type: ignore[operator]

    async def demo_serves() -> bool:
        return (await client.post("/v2/models/demo/infer", json=V2_BODY)).status == 200

    await wait_until(demo_serves, within=30)
    assert await served_versions(client, "sluggish") == {"1": "LOADING"}
    assert await ready(client) == (503, "not ready: local: models loading: sluggish")
    reply = await client.post("/v1/models/sluggish:predict", json={"instances": [[0.0] * 1024]})
    assert reply.status == 503 and "still loading" in (await reply.json())["error"]

    assert (await client.delete("/models/sluggish")).status == 200  # stops its load
    assert await ready(client) == (200, "")
    await wait_until(lambda: checks_in_flight() == 0)  # its check was killed


async def test_a_restart_with_broken_models_serves_the_others(
        make_client: Callable[..., object], repo: Path) -> None:
    put_model(repo, "broken", 1, b"not an onnx model")
    put_model(repo, "bomb", 1, memory_bomb_bytes())
    put_model(repo, "demo", 2, b"junk")  # the latest version fails: version 1 serves
    client: TestClient = await make_client(  # type: ignore[operator]
        '[models.broken]\nadapter = "local"\n',
        adapter="load_memory_bytes = 268435456\nrun_memory_bytes = 0")
    assert await served_versions(client, "demo") == {"1": "AVAILABLE", "2": "END"}
    assert await served_versions(client, "multi") == {"1": "AVAILABLE"}
    bomb = await (await client.get("/models/bomb")).json()
    assert bomb["versions"] == [{"version": "1", "state": "END", "error": (
        "loading and warming up the model on one row needs more than load_memory_bytes = "
        "268435456 bytes (256 MiB)")}]
    broken = await (await client.get("/models/broken")).json()
    assert broken["versions"][0]["error"].startswith("not a loadable ONNX model")
    # A model named in config must serve for the gateway to be ready; the others may fail.
    assert await ready(client) == (503, "not ready: local: models not loaded: broken")
    assert (await client.post("/v2/models/demo/infer", json=V2_BODY)).status == 200

    adapter = client.gateway.adapters["local"]  # type: ignore[attr-defined]
    assert isinstance(adapter, OnnxAdapter)
    await adapter.sync()  # a failed file is not tried again...
    assert not any(model.loading for model in adapter._models.values())
    put_model(repo, "broken", 1, multi_io_bytes())  # ...until it changes

    async def broken_fixed() -> bool:
        return await served_versions(client, "broken") == {"1": "AVAILABLE"}

    await wait_until(broken_fixed)
    assert await ready(client) == (200, "")


async def test_a_slow_upload_holds_up_no_other_model(
        make_client: Callable[..., object], repo: Path) -> None:
    client: TestClient = await make_client()  # type: ignore[operator]
    slow_upload = asyncio.create_task(
        client.post("/models?name=sluggish", data=io.BytesIO(slow_warm_up_bytes())))
    await wait_until(lambda: checks_in_flight() == 1)  # its check is running

    created = await client.post("/models?name=fresh", data=demo_bytes())
    assert created.status == 201, await created.text()
    replaced = await client.put("/models/demo", data=scaled_demo_bytes(2.0))
    assert replaced.status == 201, await replaced.text()
    served = await client.post("/v2/models/demo/infer", json=V2_BODY)
    assert served.status == 200 and (await served.json())["model_version"] == "2"
    assert (await client.delete("/models/multi")).status == 200
    assert not slow_upload.done()  # all of the above happened while it was being checked

    slow_upload.cancel()  # the client goes away: its check stops and its file goes
    await wait_until(lambda: checks_in_flight() == 0)
    await wait_until(lambda: sorted(p.name for p in repo.iterdir()) == ["demo", "fresh", "slow"])
    assert (await client.get("/models/sluggish")).status == 404


def test_load_limits_are_read_from_config(write_config: WriteConfig) -> None:
    config = load_config(write_config(adapter=(
        "load_timeout_s = 2.5\nload_memory_bytes = 134217728\nload_concurrency = 3\n"
        "run_memory_bytes = 0")))
    adapter = config.adapters["local"]
    assert isinstance(adapter, OnnxAdapterConfig)
    assert (adapter.load_timeout_s, adapter.load_memory_bytes, adapter.load_concurrency,
            adapter.run_memory_bytes) == (2.5, 134217728, 3, 0)
    defaults = load_config(write_config()).adapters["local"]
    assert isinstance(defaults, OnnxAdapterConfig)
    assert (defaults.load_timeout_s, defaults.load_memory_bytes, defaults.load_concurrency,
            defaults.run_memory_bytes) == (60.0, 2 * 1024**3, 2, 2 * 1024**3)
    with pytest.raises(ConfigError, match=r"adapters\.local\.load_concurrency"):
        load_config(write_config(adapter="load_concurrency = 0"))
