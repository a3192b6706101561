"""A pool of gRPC channels to one backend's endpoints, balanced by least outstanding requests;
a call that fails to connect (UNAVAILABLE) is retried once on another endpoint. Each attempt
is a client span whose `traceparent` goes to the backend."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from gateway.config import TfServingAdapterConfig
from gateway.errors import from_backend_code
from gateway.telemetry import propagation


class Endpoint:
    def __init__(self, address: str, config: TfServingAdapterConfig) -> None:
        self.address = address
        self.outstanding = 0
        self.channel = grpc.aio.insecure_channel(address, options=[
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.keepalive_time_ms", int(config.keepalive_time_s * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.initial_reconnect_backoff_ms", 100),
            # gRPC's connect timeout: without it a host that accepts but never answers holds
            # each call for 20 s (or its whole deadline) instead of failing over
            ("grpc.min_reconnect_backoff_ms", int(config.connect_timeout_s * 1000)),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ])


@dataclass(frozen=True, slots=True)
class Rpc:
    """A backend method: its names, and the stub's callable for it on an endpoint."""

    service: str
    method: str
    on: Callable[[Endpoint], Any]


class EndpointPool:
    def __init__(self, config: TfServingAdapterConfig) -> None:
        self._backend = config.name
        self.endpoints = [Endpoint(address, config) for address in config.endpoints]

    async def call(self, rpc: Rpc, request: Any, *, seconds: float) -> Any:
        """Call `rpc` with `request` on the least busy endpoint, `seconds` at most."""
        endpoint = min(self.endpoints, key=lambda e: e.outstanding)
        for attempt in range(2):
            endpoint.outstanding += 1
            try:
                with propagation.grpc_call(rpc.service, rpc.method, endpoint.address) as out:
                    return await rpc.on(endpoint)(request, timeout=max(seconds, 0.001),
                                                  metadata=out.metadata)
            except grpc.aio.AioRpcError as exc:
                others = [e for e in self.endpoints if e is not endpoint]
                if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt > 0 or not others:
                    raise from_backend_code(
                        exc.code().name, f"backend {self._backend} ({endpoint.address}): "
                        f"{exc.details() or exc.code().name}") from None
            finally:
                endpoint.outstanding -= 1  # before `endpoint` names the retry's endpoint
            endpoint = min(others, key=lambda e: e.outstanding)
        raise AssertionError("unreachable")

    async def close(self) -> None:
        for endpoint in self.endpoints:
            await endpoint.channel.close()
