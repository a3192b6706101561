"""Where a backend call goes, for every remote adapter: the least busy of a backend's endpoints,
and once more to another one if the first is unavailable (not reached, or it refused the call
before running it). `GrpcPool` is that for unary gRPC calls; each attempt is a client span
whose `traceparent` goes to the backend."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc

from adapters.pool_config import PoolConfig
from gateway.errors import GatewayError, Unavailable
from gateway.telemetry import propagation

T = TypeVar("T")


class Endpoint:
    def __init__(self, address: str) -> None:
        self.address = address
        self.outstanding = 0  # calls (streams included) not finished yet


class GrpcEndpoint(Endpoint):
    def __init__(self, address: str, config: PoolConfig) -> None:
        super().__init__(address)
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
        self._stubs: dict[Callable[[grpc.aio.Channel], Any], Any] = {}

    def stub(self, factory: Callable[[grpc.aio.Channel], Any]) -> Any:
        """One stub per service and channel: building one per call shows in profiles."""
        stub = self._stubs.get(factory)
        if stub is None:
            stub = self._stubs[factory] = factory(self.channel)
        return stub


E = TypeVar("E", bound=Endpoint)


class Balancer(Generic[E]):
    def __init__(self, endpoints: Sequence[E]) -> None:
        self.endpoints = list(endpoints)

    async def call(self, attempt: Callable[[E], Awaitable[T]]) -> T:
        """`attempt(endpoint)` on the least busy endpoint; on `Unavailable`, once on another."""
        endpoint = min(self.endpoints, key=lambda e: e.outstanding)
        for retry in (False, True):
            endpoint.outstanding += 1
            try:
                return await attempt(endpoint)
            except Unavailable:
                others = [e for e in self.endpoints if e is not endpoint]
                if retry or not others:
                    raise
            finally:
                endpoint.outstanding -= 1
            endpoint = min(others, key=lambda e: e.outstanding)
        raise AssertionError("unreachable")


@dataclass(frozen=True, slots=True)
class Rpc:
    """A backend method: its names, and the stub's callable for it on an endpoint."""

    service: str
    method: str
    stub: Callable[[grpc.aio.Channel], Any]  # the generated stub class

    def on(self, endpoint: GrpcEndpoint) -> Any:
        return getattr(endpoint.stub(self.stub), self.method)


#: A backend's gRPC failure as ours, given the failure and where it happened ("backend NAME").
ErrorMapper = Callable[[grpc.aio.AioRpcError, str], GatewayError]


class GrpcPool:
    """Unary calls to one backend's gRPC endpoints. Failures are mapped by the kind's
    `error`; UNAVAILABLE must map to `Unavailable`, so the call is tried once elsewhere."""

    def __init__(self, backend: str, addresses: Sequence[str], config: PoolConfig,
                 error: ErrorMapper) -> None:
        self._backend = backend
        self._error = error
        self._balancer = Balancer([GrpcEndpoint(address, config) for address in addresses])
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
            raise self._error(exc, f"backend {self._backend}") from None

    async def close(self) -> None:
        for endpoint in self.endpoints:
            await endpoint.channel.close()
