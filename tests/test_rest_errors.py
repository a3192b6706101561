"""Statuses a production client relies on: 413, 503 + Retry-After, 504, 404/405 on unknown
paths, and that every error is counted in /metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp.test_utils import TestClient

SLOW_BODY = {"inputs": [{"name": "x", "shape": [1, 1024], "datatype": "FP32",
                         "data": [0.01] * 1024}]}


async def test_body_over_the_limit_is_413(make_client: Callable[..., object]) -> None:
    client: TestClient = await make_client(server="max_body_bytes = 2048")  # type: ignore[operator]
    reply = await client.post("/v1/models/demo:predict",
                              data=b'{"instances": [' + b"[1,2,3,4]," * 400 + b"[1,2,3,4]]}")
    assert reply.status == 413
    assert "exceeds the limit of 2048 bytes" in (await reply.json())["error"]
    await client.close()


async def test_full_queue_is_503_with_retry_after(make_client: Callable[..., object]) -> None:
    client: TestClient = await make_client(
        '[models.slow]\nadapter = "local"\n[models.slow.batching]\n'
        'max_batch_size = 1\nmax_queue_size = 1\n')  # type: ignore[operator]
    replies = await asyncio.gather(*(client.post("/v2/models/slow/infer", json=SLOW_BODY)
                                     for _ in range(12)))
    statuses = [r.status for r in replies]
    assert 200 in statuses and 503 in statuses, statuses
    refused = replies[statuses.index(503)]
    assert refused.headers["Retry-After"] == "1"
    assert "queue is full" in (await refused.json())["error"]
    await client.close()


async def test_deadline_is_504(client: TestClient) -> None:
    reply = await client.post("/v2/models/slow/infer", json=SLOW_BODY,
                              headers={"X-Request-Timeout-Ms": "0.5"})
    assert reply.status == 504
    assert "deadline" in (await reply.json())["error"]
    # the gateway is unharmed: the next request succeeds
    assert (await client.post("/v2/models/slow/infer", json=SLOW_BODY)).status == 200


async def test_bad_timeout_header_is_400(client: TestClient) -> None:
    reply = await client.post("/v2/models/demo/infer", json={},
                              headers={"X-Request-Timeout-Ms": "soon"})
    assert reply.status == 400


async def test_unknown_path_and_method(client: TestClient) -> None:
    reply = await client.get("/nowhere")
    assert reply.status == 404 and "no such endpoint" in (await reply.json())["error"]
    reply = await client.delete("/v2/models/demo/infer")
    assert reply.status == 405 and "DELETE" in (await reply.json())["error"]
    reply = await client.post("/v1/models/demo")
    assert reply.status == 405


async def test_errors_are_counted_in_metrics(client: TestClient) -> None:
    await client.post("/v2/models/demo/infer", data=b"{")
    await client.post("/v2/models/nope/infer", json=SLOW_BODY)
    ok = await client.post("/v1/models/demo:predict", json={"instances": [[1, 2, 3, 4]]})
    assert ok.status == 200
    text = await (await client.get("/metrics")).text()
    assert 'gateway_errors_total{error="BadRequest",frontend="v2",status="400"} 1.0' in text
    assert 'gateway_errors_total{error="NotFound",frontend="v2",status="404"} 1.0' in text
    assert ('gateway_requests_total{frontend="tfserving",model="demo",status="200",variant=""} '
            '1.0' in text)
    assert "gateway_request_duration_seconds_bucket" in text


async def test_a_bug_is_500_without_traceback_and_the_gateway_keeps_serving(
        client: TestClient, monkeypatch: object) -> None:
    adapter = client.gateway.adapters["local"]  # type: ignore[attr-defined]

    async def broken(request: object) -> object:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(adapter, "infer", broken)  # type: ignore[attr-defined]
    reply = await client.post("/v1/models/demo:predict", json={"instances": [[1, 2, 3, 4]]})
    assert reply.status == 500
    text = await reply.text()
    assert "Traceback" not in text and "secret" not in text
    monkeypatch.undo()  # type: ignore[attr-defined]
    assert (await client.post("/v1/models/demo:predict",
                              json={"instances": [[1, 2, 3, 4]]})).status == 200
