"""The subject of the client certificate a door verified (mTLS), as an RFC 4514 string
(`CN=app-1,O=Acme`), the same whichever door the call came through. Parsed once per
certificate: a client's calls carry the same one."""

from __future__ import annotations

import asyncio
import functools
import ssl

import grpc
from cryptography import x509


def http_peer_subject(transport: asyncio.BaseTransport | None) -> str | None:
    """From an HTTP connection's TLS session; None when plaintext or no certificate."""
    ssl_object = None if transport is None else transport.get_extra_info("ssl_object")
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return None if not der else _subject_of_der(der)


def grpc_peer_subject(context: grpc.aio.ServicerContext) -> str | None:
    """From a gRPC call's auth context; None when plaintext or no certificate."""
    pem = context.auth_context().get("x509_pem_cert")
    return _subject_of_pem(pem[0]) if pem else None


@functools.lru_cache(maxsize=1024)
def _subject_of_der(der: bytes) -> str:
    return x509.load_der_x509_certificate(der).subject.rfc4514_string()


@functools.lru_cache(maxsize=1024)
def _subject_of_pem(pem: bytes) -> str:
    return x509.load_pem_x509_certificate(pem).subject.rfc4514_string()
