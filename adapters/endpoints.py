"""Where a backend call goes, for every remote adapter: the least busy of a backend's endpoints,
and once more to another one if the first is unavailable (not reached, or it refused the call
before running it)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

import grpc

from gateway.errors import Unavailable

T = TypeVar("T")


class ChannelSettings(Protocol):
    """The channel keys every gRPC adapter's config has."""

    @property
    def max_message_bytes(self) -> int: ...
    @property
    def keepalive_time_s(self) -> float: ...
    @property
    def connect_timeout_s(self) -> float: ...


class Endpoint:
    def __init__(self, address: str) -> None:
        self.address = address
        self.outstanding = 0  # calls (streams included) not finished yet


class GrpcEndpoint(Endpoint):
    def __init__(self, address: str, config: ChannelSettings) -> None:
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
