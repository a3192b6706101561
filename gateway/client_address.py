"""Who the client is when proxies stand in front: the standard right-to-left walk of
`X-Forwarded-For` over a configured list of trusted proxies (`[server] trusted_proxies`).

A hop is believed only if the hop after it (ultimately the TCP peer) is a trusted proxy: the
client is the right-most address that is not one. Anything a client writes into the header
itself sits to the left of that and is never reached, so it cannot choose its own address.
With no trusted proxies the header is ignored and the peer is the client.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from multidict import MultiMapping

HEADER = "X-Forwarded-For"
MAX_HOPS = 32  # a longer chain is read only this far from the right


@dataclass(frozen=True, slots=True)
class TrustedProxies:
    #: The proxies' networks as (bits, network, mask) integers: `ipaddress` takes ~10 µs to
    #: parse an address, `inet_pton` under 1, and every hop of every request is parsed.
    ranges: tuple[tuple[int, int, int], ...] = ()

    @classmethod
    def parse(cls, cidrs: Iterable[str]) -> TrustedProxies:
        """Raises `ValueError` naming the entry that is not an address or a CIDR block."""
        ranges = []
        for cidr in cidrs:
            try:
                n = ipaddress.ip_network(cidr.strip(), strict=False)
            except ValueError:
                raise ValueError(f"{cidr!r} is not an IP address or CIDR block") from None
            ranges.append((n.max_prefixlen, int(n.network_address), int(n.netmask)))
        return cls(tuple(ranges))

    def trusts(self, address: str) -> bool:
        parsed = _parse(address)
        if parsed is None:
            return False
        bits, value = parsed
        for b, network, mask in self.ranges:  # noqa: SIM110 (any() of a generator: ~2x slower)
            if b == bits and value & mask == network:
                return True
        return False

    def client(self, peer: str, headers: Mapping[str, str]) -> str:
        """The client's address, given the TCP peer's and the request's headers (a repeated
        `X-Forwarded-For` is one list, RFC 9110 5.3). Costs nothing with no trusted proxies."""
        if not self.ranges or not self.trusts(peer):
            return peer
        values = (headers.getall(HEADER, ()) if isinstance(headers, MultiMapping)
                  else (headers.get(HEADER, ""),))
        hops = [hop.strip() for value in values for hop in value.split(",")]
        client = peer
        for hop in reversed(hops[-MAX_HOPS:]):
            if not hop:
                continue
            client = hop
            if not self.trusts(hop):
                break
        return client


def _parse(address: str) -> tuple[int, int] | None:
    """(32 or 128, the address as an integer); an IPv4-mapped IPv6 address (a dual-stack
    listener's view of an IPv4 peer) as IPv4; None if it is not an address."""
    try:
        if ":" not in address:
            return 32, int.from_bytes(socket.inet_pton(socket.AF_INET, address))
        value = int.from_bytes(socket.inet_pton(socket.AF_INET6, address))
    except (OSError, ValueError):
        return None
    return (32, value & 0xFFFFFFFF) if value >> 32 == 0xFFFF else (128, value)
