"""Fixtures that start TF Serving stand-ins, and gateways with both front doors routing to
them, and stop them after the test. Load them with
`pytest_plugins = ["tests.servers.fixtures"]` (never import this module: pytest must import it
first, to rewrite its asserts)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import grpc
import pytest
from aiohttp.test_utils import TestClient

from tests.servers.otlp_receiver import OtlpReceiver
from tests.servers.running_gateway import RunningGateway, StartGateway
from tests.servers.tfserving_standin import (
    DEFAULT_LABELS,
    StartStandIn,
    TfServingStandIn,
    default_models,
    tfserving_config,
)


@pytest.fixture
async def start_standin() -> AsyncIterator[StartStandIn]:
    """Starts stand-ins on free ports (`TfServingStandIn` keyword arguments; the default
    models and labels unless given); every one is stopped after the test."""
    started: list[TfServingStandIn] = []

    async def start(models: Mapping[str, Mapping[int, bytes]] | None = None,
                    labels: Mapping[str, Mapping[str, int]] | None = None,
                    **kwargs: Any) -> TfServingStandIn:
        standin = TfServingStandIn(default_models() if models is None else models,
                                   DEFAULT_LABELS if labels is None and models is None
                                   else labels, **kwargs)
        await standin.start()
        started.append(standin)
        return standin

    yield start
    for standin in started:
        await standin.stop()


@pytest.fixture
async def standin(start_standin: StartStandIn) -> TfServingStandIn:
    """One stand-in serving the default models."""
    return await start_standin()


@pytest.fixture
async def standin_pair(start_standin: StartStandIn
                       ) -> tuple[TfServingStandIn, TfServingStandIn]:
    """Two stand-ins serving the same models: one backend with two endpoints."""
    return await start_standin(), await start_standin()


@pytest.fixture
def hung_address() -> Iterator[str]:
    """A 127.0.0.1 address that accepts TCP connections and never answers (a hung host)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"127.0.0.1:{listener.getsockname()[1]}"


@pytest.fixture
async def start_gateway(make_client: Callable[..., object], standin: TfServingStandIn
                        ) -> AsyncIterator[StartGateway]:
    """Starts a gateway (HTTP on aiohttp's test server, gRPC on a free port) serving `demo`
    in-process and `tfdemo`/`tfmulti` from `standin`; `extra` is more config TOML, `server`
    more `[server]` keys."""
    running: list[tuple[Any, grpc.aio.Channel]] = []

    async def start(extra: str = "", server: str = "") -> RunningGateway:
        http: TestClient = await make_client(  # type: ignore[operator]
            tfserving_config(standin.address) + extra, server=f"grpc_port = 0\n{server}")
        grpc_server = http.gateway.grpc_server()  # type: ignore[attr-defined]
        port = await grpc_server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        running.append((grpc_server, channel))
        return RunningGateway(http, port, channel)

    yield start
    for grpc_server, channel in running:
        await channel.close()
        await grpc_server.stop()


@pytest.fixture
async def gw(start_gateway: StartGateway) -> RunningGateway:
    """A gateway as `start_gateway` starts it with the default config."""
    return await start_gateway()


@pytest.fixture
async def otlp_receiver() -> AsyncIterator[OtlpReceiver]:
    """An OTLP/gRPC trace receiver on a free port, keeping what it is sent."""
    receiver = OtlpReceiver()
    await receiver.start()
    yield receiver
    await receiver.stop()


@pytest.fixture
def traced(monkeypatch: pytest.MonkeyPatch, otlp_receiver: OtlpReceiver) -> OtlpReceiver:
    """Gateways built after this trace every request and export to `otlp_receiver` within
    tens of ms, configured through the OTEL_* environment as ops would. Request it before
    the gateway's fixtures, so the receiver outlives the gateways (they flush as they close)."""
    for name, value in {
            "OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.endpoint,
            "OTEL_SERVICE_NAME": "gateway-under-test", "OTEL_TRACES_SAMPLER": "always_on",
            "OTEL_BSP_SCHEDULE_DELAY": "10", "OTEL_EXPORTER_OTLP_TIMEOUT": "5"}.items():
        monkeypatch.setenv(name, value)
    return otlp_receiver
