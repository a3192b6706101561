"""How the gateway talks to a remote backend's endpoints, the same for every remote kind
(TF Serving, TorchServe, v2): the keys sit flat in the backend's `[adapters.NAME]` table next
to the kind's own, and one parser reads them for all kinds."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.tomlconfig import Table, keys_of


@dataclass(frozen=True)
class PoolConfig:
    max_message_bytes: int = 64 * 1024 * 1024
    keepalive_time_s: float = 30.0
    connect_timeout_s: float = 5.0


POOL_KEYS = keys_of(PoolConfig)


def parse_pool(t: Table) -> PoolConfig:
    d = PoolConfig()
    return PoolConfig(
        max_message_bytes=t.integer("max_message_bytes", d.max_message_bytes, minimum=1024),
        keepalive_time_s=t.number("keepalive_time_s", d.keepalive_time_s, minimum=1),
        connect_timeout_s=t.number("connect_timeout_s", d.connect_timeout_s, minimum=0.01),
    )


def parse_addresses(t: Table, key: str, *, required: bool = True,
                    url: bool = False) -> tuple[str, ...]:
    """`"host:port"` strings (`"http://host:port"` with `url`), none only if not `required`."""
    form = "http://host:port" if url else "host:port"
    addresses = t.texts(key)
    if required and not addresses:
        raise t.error(key, f"expected a non-empty list of \"{form}\" strings")
    for address in addresses:
        scheme, _, rest = address.rpartition("://") if url else ("http", "", address)
        host, _, port = rest.rstrip("/").rpartition(":")
        if scheme not in ("http", "https") or not host or not port.isdigit():
            raise t.error(key, f"expected \"{form}\", got {address!r}")
    return tuple(a.rstrip("/") for a in addresses)
