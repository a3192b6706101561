"""The certificate files read in one go and checked together (`TlsMaterial`), and
`CertificateFiles`, which re-reads them when they change.

A change is seen from each file's inode, size and modification time, looked at no more than
once per `CHECK_INTERVAL_S` by whichever door asks (an HTTP accept, a gRPC handshake): no
thread, no timer. A Kubernetes secret update swaps a symlink (a new inode); `cp` or an ACME
client rewrites in place (a new mtime). A rotation caught halfway (the new certificate with
the old key) does not pass the checks: the previous material stays in use and the files are
read again at the next look.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.tls.config import TlsConfig

log = logging.getLogger("gateway.tls")

CHECK_INTERVAL_S = 1.0
_PUBLIC = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

Signature = tuple[tuple[int, int, int], ...]  # per file: inode, size, mtime (ns)


class MaterialError(Exception):
    """A certificate file is missing, unreadable or invalid; `key` names its config key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class TlsMaterial:
    """The PEM bytes of one reading of the files, checked to belong together."""

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None
    serial: int  # of the leaf certificate: what a log line names after a reload


def read_material(config: TlsConfig) -> TlsMaterial:
    """Read and check the files; raises `MaterialError` naming the key at fault."""
    chain = _read(config.cert_file, "cert_file")
    try:
        leaf = x509.load_pem_x509_certificates(chain)[0]
    except ValueError:
        raise MaterialError("cert_file", f"{config.cert_file}: no PEM certificate in it") from None
    key = _read(config.key_file, "key_file")
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError) as exc:
        raise MaterialError("key_file", f"{config.key_file}: not an unencrypted PEM private key "
                            f"({exc})") from None
    if private.public_key().public_bytes(*_PUBLIC) != leaf.public_key().public_bytes(*_PUBLIC):
        raise MaterialError("key_file", f"{config.key_file}: not the key of the certificate "
                            f"in {config.cert_file}")
    ca = None
    if config.client_ca_file is not None:
        ca = _read(config.client_ca_file, "client_ca_file")
        try:
            x509.load_pem_x509_certificates(ca)
        except ValueError:
            raise MaterialError("client_ca_file", f"{config.client_ca_file}: no PEM "
                                "certificate in it") from None
    return TlsMaterial(chain, key, ca, leaf.serial_number)


def _read(path: Path, key: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise MaterialError(key, f"{path}: cannot read: {exc.strerror}") from None


class CertificateFiles:
    """The files of one `TlsConfig`, re-read when they change. Thread-safe: gRPC asks from
    its own threads."""

    def __init__(self, config: TlsConfig, door: str, interval_s: float = CHECK_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """`door`: whose files these are, for log lines ("http", "grpc")."""
        self._config = config
        self._door = door
        self._interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._signature = self._stat()
        self.material = read_material(config)  # at start, a failure is the caller's to report
        self._next_check = clock() + interval_s
        self._refused: Signature | None = None  # files already found invalid, logged once

    def changed(self) -> TlsMaterial | None:
        """New material if the files changed (and are valid) since the last reading."""
        now = self._clock()
        if now < self._next_check:  # unlocked read: a stale one only delays a check
            return None
        with self._lock:
            if now < self._next_check:
                return None
            self._next_check = now + self._interval_s
            signature = self._stat()  # before reading: a change during the read is seen next
            if signature == self._signature or signature == self._refused:
                return None
            try:
                material = read_material(self._config)
            except MaterialError as exc:
                self._refused = signature
                log.warning("tls (%s): keeping the certificate in use (serial %x): %s",
                            self._door, self.material.serial, exc)
                return None
            self._signature, self.material = signature, material
            log.info("tls (%s): certificate files changed; new connections get serial %x",
                     self._door, material.serial)
            return material

    def _stat(self) -> Signature:
        files = [self._config.cert_file, self._config.key_file]
        if self._config.client_ca_file is not None:
            files.append(self._config.client_ca_file)
        signature = []
        for path in files:
            try:
                st = os.stat(path)
                signature.append((st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError:
                signature.append((0, 0, 0))  # gone for now (a swap under way): seen as a change
        return tuple(signature)
