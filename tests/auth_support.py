"""Keys, tokens and a settable clock for the auth tests: real crypto, signed with pyjwt."""

from __future__ import annotations

import base64
import functools
import json
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.auth.config import AuthConfig
from gateway.config import load_config
from gateway.types import RequestContext

SECRET = "a-development-secret-of-at-least-32-bytes"
ISSUER = "demo-issuer"
AUDIENCE = "gateway"


class FakeClock:
    """Wall time the test sets: token times, cache expiry and JWKS refresh all read it."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@functools.cache
def rsa_key(n: int = 0) -> rsa.RSAPrivateKey:
    """The n-th RSA key of the session (key generation is slow: each is made once)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def ec_key(n: int = 0) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@functools.cache
def ed_key(n: int = 0) -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def public_pem(key: PrivateKeyTypes) -> str:
    return key.public_key().public_bytes(
        Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()


def claims(now: float, **overrides: Any) -> dict[str, Any]:
    """A valid claim set for `demo-issuer`; `name=None` drops a claim."""
    base = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "scope": "predict",
            "iat": int(now), "exp": int(now) + 3600}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(payload: dict[str, Any], key: Any = SECRET, algorithm: str = "HS256",
         kid: str | None = None) -> str:
    return jwt.encode(payload, key, algorithm=algorithm,
                      headers={"kid": kid} if kid is not None else None)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    """A token built by hand, as an attacker would: pyjwt refuses to sign these."""
    return ".".join((b64url(json.dumps(header).encode()), b64url(json.dumps(payload).encode()),
                     b64url(signature)))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def context(headers: dict[str, str]) -> RequestContext:
    return RequestContext(frontend="test", headers=headers, deadline=time.monotonic() + 10)


def provider(*lines: str, name: str = "demo", issuer: str = ISSUER) -> str:
    """One `[[auth.providers]]` table; `lines` add its algorithms and key."""
    return "\n".join(["", "[[auth.providers]]", f'name = "{name}"', f'issuer = "{issuer}"',
                      f'audiences = ["{AUDIENCE}"]', *lines, ""])


def hs_provider(name: str = "demo", issuer: str = ISSUER) -> str:
    return provider('algorithms = ["HS256"]', f'secret = "{SECRET}"', name=name, issuer=issuer)


def public_key_provider(name: str, issuer: str, algorithms: str, key: PrivateKeyTypes) -> str:
    # One-line TOML string: JSON's escapes are TOML's.
    return provider(f"algorithms = [{algorithms}]", f"public_key = {json.dumps(public_pem(key))}",
                    name=name, issuer=issuer)


def auth_config(tmp_path: Path, text: str) -> AuthConfig:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return load_config(path).auth
