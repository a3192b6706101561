"""Development tokens for `gateway token`: HS* tokens a provider with the same secret accepts.

Production tokens come from an identity provider; this exists so a demo or a test can call
an auth-enabled gateway without one.
"""

from __future__ import annotations

import jwt

from gateway.auth.keys import check_key


def mint_token(secret: bytes, *, subject: str, scope: str, ttl_s: int, issuer: str,
               audience: str, algorithm: str, now: float) -> str:
    """Raises `ValueError` (with a message for the user) on a weak secret or a bad ttl."""
    if ttl_s <= 0:
        raise ValueError("the ttl must be a positive number of seconds")
    check_key(algorithm, secret)  # the same rules the gateway applies when it loads the key
    issued = int(now)
    claims = {"iss": issuer, "aud": audience, "sub": subject, "scope": scope,
              "iat": issued, "exp": issued + ttl_s}
    return jwt.encode(claims, secret, algorithm=algorithm)
