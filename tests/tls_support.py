"""Certificates made at test time (trustme): a CA, a server certificate for 127.0.0.1 and
localhost that `rotate()` replaces on disk the way a secret update does, client certificates,
and what a TLS handshake to a port presents."""

from __future__ import annotations

import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography import x509


@dataclass(frozen=True)
class ClientCertificate:
    pem: Path  # its key and certificate chain, one file (curl --cert, grpc, ssl)
    subject: str  # RFC 4514, as the gateway reports it

    def ssl_context(self, ca_file: Path, alpn: str) -> ssl.SSLContext:
        return client_context(ca_file, alpn, self)


class Certificates:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ca = trustme.CA()
        self.ca_file = directory / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.cert_file = directory / "server.pem"
        self.key_file = directory / "server.key"
        self.serial = self.rotate()

    def rotate(self) -> int:
        """Write a new server certificate (a new serial) over the files, each replaced by a
        rename, the key first: for a moment the key no longer matches the certificate."""
        issued = self.ca.issue_cert("127.0.0.1", "localhost")
        _replace(self.key_file, issued.private_key_pem.bytes())
        _replace(self.cert_file, b"".join(pem.bytes() for pem in issued.cert_chain_pems))
        self.serial = serial_of(issued.cert_chain_pems[0].bytes())
        return self.serial

    def client(self, name: str) -> ClientCertificate:
        issued = self.ca.issue_cert(f"{name}.clients.test", common_name=name)
        pem = self.directory / f"{name}.pem"
        issued.private_key_and_cert_chain_pem.write_to_path(str(pem))
        leaf = x509.load_pem_x509_certificate(issued.cert_chain_pems[0].bytes())
        return ClientCertificate(pem, leaf.subject.rfc4514_string())

    def server_table(self, *, mutual: bool) -> str:
        """`[server.tls]` as TOML, with paths relative to a config file in `directory`."""
        ca = f'client_ca_file = "{self.ca_file.name}"\n' if mutual else ""
        return (f'[server.tls]\ncert_file = "{self.cert_file.name}"\n'
                f'key_file = "{self.key_file.name}"\n{ca}')


def serial_of(pem: bytes) -> int:
    return x509.load_pem_x509_certificate(pem).serial_number


def client_context(ca_file: Path, alpn: str,
                   client: ClientCertificate | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_file))
    context.set_alpn_protocols([alpn])
    if client is not None:
        context.load_cert_chain(str(client.pem))
    return context


def served_serial(port: int, context: ssl.SSLContext) -> int:
    """The serial of the certificate a new handshake to 127.0.0.1:`port` is given."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def _replace(path: Path, data: bytes) -> None:
    staged = path.with_suffix(path.suffix + ".new")
    staged.write_bytes(data)
    os.replace(staged, path)
