"""What each door hands its server: `HttpsContexts.current()` an `ssl.SSLContext` for each HTTP
connection accepted, `grpc_credentials()` gRPC core's dynamic credentials, whose fetcher gRPC
calls at each handshake. Both serve the files' latest valid reading (`CertificateFiles`); a
connection keeps the certificate it was opened with.

A changed certificate gets a new `SSLContext` rather than `load_cert_chain` on the live one:
that would also work for new handshakes, but a CA bundle cannot be unloaded from a context, so
a CA removed from `client_ca_file` would still be trusted.
"""

from __future__ import annotations

import os
import ssl

import grpc

from gateway.tls.config import TlsConfig
from gateway.tls.material import CertificateFiles, TlsMaterial


class HttpsContexts:
    def __init__(self, config: TlsConfig) -> None:
        self._files = CertificateFiles(config, "http")
        self._context = ssl_context(self._files.material)

    def current(self) -> ssl.SSLContext:
        """The context for a connection being accepted now."""
        material = self._files.changed()
        if material is not None:
            self._context = ssl_context(material)
        return self._context


def ssl_context(material: TlsMaterial) -> ssl.SSLContext:
    """A server context for HTTP/1.1: TLS 1.2 or later, client certificates required when a
    client CA is set."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    # `load_cert_chain` takes only paths: an in-memory file keeps the bytes that were checked
    # together (the files on disk may be changing under us), and nothing is written to disk.
    fd = os.memfd_create("gateway-tls")
    try:
        os.write(fd, material.cert_chain + b"\n" + material.private_key)
        context.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
    if material.client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=material.client_ca.decode("ascii"))
    return context


def grpc_credentials(config: TlsConfig) -> grpc.ServerCredentials:
    """Credentials that pick up changed files at the next handshake (gRPC core asks the
    fetcher each time; None means "unchanged"). gRPC core enforces TLS 1.2 or later."""
    files = CertificateFiles(config, "grpc")

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        material = files.changed()
        return None if material is None else _grpc_configuration(material)

    return grpc.dynamic_ssl_server_credentials(
        _grpc_configuration(files.material), fetch,
        require_client_authentication=config.mutual)


def _grpc_configuration(material: TlsMaterial) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration(
        [(material.private_key, material.cert_chain)], root_certificates=material.client_ca)
