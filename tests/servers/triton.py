"""Fixtures for a real Triton (see `tests.servers.triton_server`): its model repository, written
once per session, and one server for the session serving it. Load with
`pytest_plugins = ["tests.servers.triton"]`. Tests may also have a Triton of their own (one
they may stop, or one that traces)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.servers.triton_server import Triton, require_triton, write_repository


@pytest.fixture(scope="session")
def triton_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_triton()
    return write_repository(tmp_path_factory.mktemp("triton-models"))


@pytest.fixture(scope="session")
def triton(triton_repository: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Triton]:
    """One Triton for the session, serving `affine` and `words`."""
    server = Triton(triton_repository, tmp_path_factory.mktemp("triton"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def private_triton(triton_repository: Path, tmp_path: Path) -> Iterator[Triton]:
    """A Triton of the test's own, one it may stop."""
    server = Triton(triton_repository, tmp_path / "triton")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def traced_triton(triton_repository: Path, tmp_path: Path
                        ) -> AsyncIterator[tuple[Triton, list[dict[str, Any]]]]:
    """A Triton of the test's own that traces every request with OpenTelemetry (continuing a
    caller's `traceparent`) and exports its spans as OTLP/HTTP JSON to a receiver here; the
    list fills with their `name`, `traceId`, `spanId` and `parentSpanId` as they come."""
    spans: list[dict[str, Any]] = []

    async def export(request: web.Request) -> web.Response:
        document = await request.json()
        spans.extend(span for resource in document.get("resourceSpans", ())
                     for scope in resource.get("scopeSpans", ()) for span in scope["spans"])
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/v1/traces", export)
    receiver = TestServer(app, host="127.0.0.1")
    await receiver.start_server()
    server = Triton(triton_repository, tmp_path / "triton", options=(
        "--trace-config=mode=opentelemetry", "--trace-config=rate=1",
        "--trace-config=level=TIMESTAMPS",
        f"--trace-config=opentelemetry,url=127.0.0.1:{receiver.port}/v1/traces",
        "--trace-config=opentelemetry,bsp_schedule_delay=20"))
    await asyncio.to_thread(server.start)
    yield server, spans
    await asyncio.to_thread(server.stop)
    await receiver.close()
