"""`claim_ports`: a port anything listens on is refused by name; a claimed port takes the
gateway's own SO_REUSEPORT listeners and nobody else's; connections an earlier run left in
TIME_WAIT do not count."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from gateway.config import ServerConfig
from gateway.ports import PortInUse, claim_ports


def listen(port: int, *, reuse_port: bool) -> socket.socket:
    return socket.create_server(("127.0.0.1", port), reuse_port=reuse_port)


@pytest.fixture
def plain_listener() -> Iterator[int]:
    with listen(0, reuse_port=False) as sock:
        yield sock.getsockname()[1]


def test_port_0_is_chosen_and_held_for_the_gateways_own_listeners() -> None:
    with claim_ports(ServerConfig(http_port=0, grpc_port=0)) as claimed:
        assert claimed.http_port and claimed.grpc_port
        assert claimed.http_port != claimed.grpc_port
        with pytest.raises(OSError):  # nobody else, even before a worker listens
            listen(claimed.http_port, reuse_port=False)
        with listen(claimed.http_port, reuse_port=True) as worker, \
                socket.create_connection(("127.0.0.1", claimed.http_port), timeout=5):
            worker.settimeout(5)
            connection, _ = worker.accept()  # the hold itself never takes a connection
            connection.close()
            with pytest.raises(PortInUse, match=f"port {claimed.http_port} \\(http\\)"):
                claim_ports(ServerConfig(http_port=claimed.http_port, grpc_port=0))
    listen(claimed.http_port, reuse_port=False).close()  # released


@pytest.mark.parametrize("door", ["http", "grpc"])
def test_a_port_a_plain_socket_listens_on_is_refused_by_name(plain_listener: int,
                                                             door: str) -> None:
    ports = {"http_port": 0, "grpc_port": 0, f"{door}_port": plain_listener}
    with pytest.raises(PortInUse) as refused:
        claim_ports(ServerConfig(**ports))
    assert str(refused.value) == f"port {plain_listener} ({door}) is already in use"


def test_a_port_another_reuse_port_listener_holds_is_refused() -> None:
    with listen(0, reuse_port=True) as other:  # another gateway's worker
        port = other.getsockname()[1]
        with pytest.raises(PortInUse, match=f"port {port} \\(grpc\\)"):
            claim_ports(ServerConfig(http_port=0, grpc_port=port))


def test_connections_left_in_time_wait_do_not_count() -> None:
    with listen(0, reuse_port=True) as server:
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            connection, _ = server.accept()
            connection.close()  # the server closes first: TIME_WAIT on the server's port
    with claim_ports(ServerConfig(http_port=port, grpc_port=0)) as claimed:
        assert claimed.http_port == port
