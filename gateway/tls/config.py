"""`[server.tls]`: the listeners' certificate, key and (for mTLS) the CA client certificates
must be signed by. The files are read and checked when the config loads, so a bad path or a key
that does not match its certificate fails `gateway check-config`, not the first handshake."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from gateway.tomlconfig import Table

KEYS = ("cert_file", "key_file", "client_ca_file")


@dataclass(frozen=True)
class TlsConfig:
    cert_file: Path  # PEM: the server certificate, then any intermediates
    key_file: Path  # PEM, unencrypted (a mounted secret; no passphrase to keep elsewhere)
    client_ca_file: Path | None = None  # PEM CA bundle; set: clients must present a cert it signed

    @property
    def mutual(self) -> bool:
        return self.client_ca_file is not None


def parse_tls_config(t: Table) -> TlsConfig | None:
    """None when the table is absent or empty: the listeners serve plaintext."""
    from gateway.tls.material import MaterialError, read_material  # cryptography: only if used

    t.expect(KEYS)
    if not t.data:
        return None
    config = TlsConfig(cert_file=file_path(t, "cert_file"), key_file=file_path(t, "key_file"),
                       client_ca_file=(file_path(t, "client_ca_file")
                                       if "client_ca_file" in t else None))
    t.finish()
    try:
        read_material(config)
    except MaterialError as exc:
        raise t.error(exc.key, str(exc)) from None
    return config


def file_path(t: Table, key: str) -> Path:
    """A file named in the config, relative to the config file's directory."""
    path = Path(t.text(key))
    return path if path.is_absolute() else t.source.path.parent / path


def plaintext_warning(host: str, tls: TlsConfig | None) -> str | None:
    """Why serving `host` without TLS deserves a warning, or None (TLS on, or loopback only)."""
    if tls is not None or _loopback(host):
        return None
    return (f"[server] host {host!r} is reachable from other machines and [server.tls] is not "
            "set: HTTP and gRPC are served in plaintext (tokens and tensors readable on the "
            "network); set [server.tls] or terminate TLS in front of the gateway")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False
