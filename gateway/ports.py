"""The gateway's ports are its own. The listeners set SO_REUSEPORT so that the workers of one
gateway share a port, and Linux lets any socket of the same user with SO_REUSEPORT join such a
port: a second gateway would silently take half the traffic. So before serving, each port is
probed by a bind without SO_REUSEPORT (which fails while anything else has it) and then held by
a bound, never listening, socket with SO_REUSEPORT and without SO_REUSEADDR: only sockets that
set SO_REUSEPORT can bind beside it (the gateway's own listeners), and it receives no
connections. A port given as 0 is chosen here, so that every worker binds the same one.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass, replace
from types import TracebackType

from gateway.config import GatewayConfig, ServerConfig


class PortInUse(Exception):
    def __init__(self, port: int, door: str) -> None:
        super().__init__(f"port {port} ({door}) is already in use")
        self.port = port
        self.door = door


@dataclass
class ClaimedPorts:
    """The HTTP and gRPC ports held for the life of the gateway (a context manager)."""

    http_port: int
    grpc_port: int
    _holds: tuple[socket.socket, ...]

    def apply(self, config: GatewayConfig) -> GatewayConfig:
        """`config` with the claimed ports (a port given as 0 replaced by the one chosen)."""
        return replace(config, server=replace(config.server, http_port=self.http_port,
                                              grpc_port=self.grpc_port))

    def close(self) -> None:
        for hold in self._holds:
            hold.close()

    def __enter__(self) -> ClaimedPorts:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


def claim_ports(server: ServerConfig) -> ClaimedPorts:
    """Probe and hold `[server]`'s HTTP and gRPC ports; raises `PortInUse` naming the first
    one something else listens on (or holds)."""
    holds: list[socket.socket] = []
    try:
        ports = []
        for door, port in (("http", server.http_port), ("grpc", server.grpc_port)):
            hold = _claim(server.host, port, door)
            holds.append(hold)
            ports.append(hold.getsockname()[1])
    except BaseException:
        for hold in holds:
            hold.close()
        raise
    return ClaimedPorts(ports[0], ports[1], tuple(holds))


def _claim(host: str, port: int, door: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if port:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # SO_REUSEADDR: connections of an earlier run in TIME_WAIT do not count, a
            # listening socket does; without SO_REUSEPORT, so no reuse-port group is joined.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            _bind(probe, host, port, door)
    hold = socket.socket(family, socket.SOCK_STREAM)
    try:
        hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        _bind(hold, host, port, door)
    except BaseException:
        hold.close()
        raise
    return hold


def _bind(sock: socket.socket, host: str, port: int, door: str) -> None:
    try:
        sock.bind((host, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(port, door) from None
        raise

