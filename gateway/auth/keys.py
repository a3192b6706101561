"""Which signing algorithms the gateway accepts and which keys can verify them.

One table, read at config load (to refuse a provider whose key cannot verify its algorithms)
and per JWKS key (a key published for one algorithm must not verify another).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeGuard

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ec import (
    SECP256R1,
    SECP384R1,
    EllipticCurvePublicKey,
)
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

PublicKey = RSAPublicKey | EllipticCurvePublicKey | Ed25519PublicKey | Ed448PublicKey
#: An HMAC secret (bytes) or a public key; never a private key.
VerifyingKey = bytes | PublicKey

HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA")
#: `none` is absent on purpose: an unsigned token proves nothing.
ALGORITHMS = HMAC_ALGORITHMS + ASYMMETRIC_ALGORITHMS

_PUBLIC_KEY_TYPES = (RSAPublicKey, EllipticCurvePublicKey, Ed25519PublicKey, Ed448PublicKey)
_KEY_TYPES: dict[str, tuple[type, ...]] = {
    "RS": (RSAPublicKey,), "PS": (RSAPublicKey,), "ES": (EllipticCurvePublicKey,),
    "Ed": (Ed25519PublicKey, Ed448PublicKey)}
_CURVES = {"ES256": SECP256R1, "ES384": SECP384R1}


@dataclass(frozen=True, slots=True)
class TrustedKey:
    key: VerifyingKey
    algorithm: str | None = None  # a JWK's `alg`: when set, the only algorithm it verifies


class UnusableKey(ValueError):
    """A key cannot be used; the message says why without showing the key."""


def key_fits(algorithm: str, key: VerifyingKey) -> bool:
    """Whether `key` can verify `algorithm`: an RSA key never verifies ES256, a secret never
    verifies RS256 (the HS/RS confusion), an ES256 key must be on P-256."""
    if algorithm in HMAC_ALGORITHMS:
        return isinstance(key, bytes)
    if not isinstance(key, _KEY_TYPES[algorithm[:2]]):
        return False
    curve = _CURVES.get(algorithm)
    return curve is None or (isinstance(key, EllipticCurvePublicKey)
                             and isinstance(key.curve, curve))


def check_key(algorithm: str, key: VerifyingKey) -> None:
    """Raise `UnusableKey` unless `key` fits `algorithm` and is long enough (RFC 7518 §3.2 for
    secrets, 2048 bits for RSA): checked once here so verification never meets a weak key."""
    if not key_fits(algorithm, key):
        raise UnusableKey(f"{_describe(key)} cannot verify {algorithm}")
    verifier = jwt.get_algorithm_by_name(algorithm)
    try:
        prepared = verifier.prepare_key(key)
    except jwt.InvalidKeyError:
        raise UnusableKey("the secret looks like a PEM, SSH or DER key; a public key must never "
                          "be used as an HMAC secret") from None
    too_short = verifier.check_key_length(prepared)
    if too_short:
        raise UnusableKey(too_short)


def _describe(key: VerifyingKey) -> str:
    if isinstance(key, bytes):
        return "an HMAC secret"
    if isinstance(key, EllipticCurvePublicKey):
        return f"an EC key on {key.curve.name}"
    return f"an {type(key).__name__.removesuffix('PublicKey')} key"


def secret_from_env(name: str) -> bytes:
    secret = os.environ.get(name)
    if not secret:
        raise UnusableKey(f"environment variable {name} is not set or empty")
    return secret.encode()


def load_public_key(pem: bytes) -> PublicKey:
    """A PEM public key; a private key is refused, since the gateway only verifies."""
    if b"PRIVATE KEY" in pem:
        raise UnusableKey("this is a private key; give the gateway the public key only")
    try:
        key = load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm):
        raise UnusableKey("not a PEM public key (expected -----BEGIN PUBLIC KEY-----)") from None
    if not isinstance(key, _PUBLIC_KEY_TYPES):
        raise UnusableKey(f"unsupported key type {type(key).__name__}")
    return key


def is_public_key(key: object) -> TypeGuard[PublicKey]:
    return isinstance(key, _PUBLIC_KEY_TYPES)
