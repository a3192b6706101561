"""Where a TorchServe call goes: the least busy of an API's endpoints, and once more to another
one if the first is unavailable (not reached, or it refused the job before running it)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import grpc

from gateway.config import TorchServeAdapterConfig
from gateway.errors import Unavailable

T = TypeVar("T")


class Endpoint:
    def __init__(self, address: str) -> None:
        self.address = address
        self.outstanding = 0  # calls (streams included) not finished yet


class GrpcEndpoint(Endpoint):
    def __init__(self, address: str, config: TorchServeAdapterConfig) -> None:
        super().__init__(address)
        self.channel = grpc.aio.insecure_channel(address, options=[
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.keepalive_time_ms", int(config.keepalive_time_s * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", int(config.connect_timeout_s * 1000)),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ])


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
