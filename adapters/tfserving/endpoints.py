"""A pool of gRPC channels to one backend's endpoints, balanced by least outstanding requests;
a call that fails to connect (UNAVAILABLE) is retried once on another endpoint. Each attempt
is a client span whose `traceparent` goes to the backend."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from adapters.endpoints import Balancer, GrpcEndpoint
from gateway.config import TfServingAdapterConfig
from gateway.errors import from_backend_code
from gateway.telemetry import propagation


@dataclass(frozen=True, slots=True)
class Rpc:
    """A backend method: its names, and the stub's callable for it on an endpoint."""

    service: str
    method: str
    stub: Callable[[grpc.aio.Channel], Any]  # the generated stub class

    def on(self, endpoint: GrpcEndpoint) -> Any:
        return getattr(endpoint.stub(self.stub), self.method)


class EndpointPool:
    def __init__(self, config: TfServingAdapterConfig) -> None:
        self._backend = config.name
        self._balancer = Balancer([GrpcEndpoint(address, config) for address in config.endpoints])
        self.endpoints = self._balancer.endpoints

    async def call(self, rpc: Rpc, request: Any, *, seconds: float) -> Any:
        """Call `rpc` with `request` on the least busy endpoint, `seconds` at most."""
        return await self._balancer.call(lambda endpoint: self._attempt(endpoint, rpc, request,
                                                                        seconds))

    async def _attempt(self, endpoint: GrpcEndpoint, rpc: Rpc, request: Any,
                       seconds: float) -> Any:
        try:
            with propagation.grpc_call(rpc.service, rpc.method, endpoint.address) as out:
                return await rpc.on(endpoint)(request, timeout=max(seconds, 0.001),
                                              metadata=out.metadata)
        except grpc.aio.AioRpcError as exc:
            # UNAVAILABLE (and RESOURCE_EXHAUSTED) become `Unavailable`: the balancer then
            # tries another endpoint, since the call did not run
            raise from_backend_code(
                exc.code().name, f"backend {self._backend} ({endpoint.address}): "
                f"{exc.details() or exc.code().name}") from None

    async def close(self) -> None:
        for endpoint in self.endpoints:
            await endpoint.channel.close()
