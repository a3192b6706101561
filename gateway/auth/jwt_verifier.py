"""Full verification of one token: the provider its issuer names, the key its header names, then
signature, audience, issuer and required claims (pyjwt) and exp/nbf/iat (here, against the
gateway's clock, the same one the verified-token cache expires entries by).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jwt
from jwt.types import Options

from gateway.auth.failures import InvalidToken, Reason
from gateway.auth.keys import key_fits
from gateway.auth.providers import Provider

Claims = dict[str, Any]

# Most specific first: InvalidSignatureError is a DecodeError.
_PYJWT_ERRORS: tuple[tuple[type[jwt.PyJWTError], Reason, str], ...] = (
    (jwt.InvalidSignatureError, Reason.BAD_SIGNATURE, "signature verification failed"),
    (jwt.InvalidAudienceError, Reason.BAD_AUDIENCE, "token is not meant for this audience"),
    (jwt.InvalidIssuerError, Reason.BAD_ISSUER, "token issuer does not match"),
    (jwt.MissingRequiredClaimError, Reason.MISSING_CLAIM, "token lacks a required claim"),
    (jwt.InvalidAlgorithmError, Reason.ALGORITHM, "token algorithm is not accepted"),
    (jwt.DecodeError, Reason.MALFORMED, "token is not a well-formed JWT"),
)


class JwtVerifier:
    def __init__(self, providers: Sequence[Provider], leeway_s: float,
                 required_claims: Sequence[str]) -> None:
        self._by_issuer = {p.issuer: p for p in providers}
        self._leeway_s = leeway_s
        # `sub` names the principal that limits and logs are keyed by: always required.
        self._options: Options = {
            "require": sorted({*required_claims, "sub"}),
            "verify_exp": False, "verify_nbf": False, "verify_iat": False,
            "enforce_minimum_key_length": True,
        }

    async def verify(self, token: str, now: float) -> Claims:
        try:
            unverified = jwt.decode_complete(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise InvalidToken(Reason.MALFORMED, "token is not a well-formed JWT") from None
        header, issuer = unverified["header"], unverified["payload"].get("iss")
        provider = self._by_issuer.get(issuer) if isinstance(issuer, str) else None
        if provider is None:
            raise InvalidToken(Reason.UNKNOWN_ISSUER, "token issuer is not trusted")
        algorithm = header.get("alg")
        if algorithm not in provider.algorithms:
            raise InvalidToken(Reason.ALGORITHM, "token algorithm is not accepted")
        trusted = await provider.keys.key(header.get("kid"))
        if trusted.algorithm not in (None, algorithm) or not key_fits(algorithm, trusted.key):
            raise InvalidToken(Reason.UNKNOWN_KEY, "token key does not match its algorithm")
        try:
            claims: Claims = jwt.decode(
                token, trusted.key, algorithms=provider.algorithms, options=self._options,
                audience=provider.audiences, issuer=provider.issuer)
        except jwt.PyJWTError as exc:
            reason, description = next(
                ((r, d) for kind, r, d in _PYJWT_ERRORS if isinstance(exc, kind)),
                (Reason.INVALID_CLAIM, "token claims are invalid"))
            raise InvalidToken(reason, description) from None
        check_times(claims, now, self._leeway_s)
        return claims


def check_times(claims: Claims, now: float, leeway_s: float) -> None:
    """RFC 7519 §4.1.4-6 with leeway for clock skew. Non-finite values are refused: JSON
    parsers accept `NaN`, and a NaN `exp` would never compare as expired."""
    times = {}
    for name in ("exp", "nbf", "iat"):
        value = claims.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
                value):
            raise InvalidToken(Reason.INVALID_CLAIM, f"claim {name} must be a NumericDate")
        times[name] = value
    if "exp" in times and times["exp"] <= now - leeway_s:
        raise InvalidToken(Reason.EXPIRED, "token has expired")
    if "nbf" in times and times["nbf"] > now + leeway_s:
        raise InvalidToken(Reason.NOT_YET_VALID, "token is not valid yet")
    if "iat" in times and times["iat"] > now + leeway_s:
        raise InvalidToken(Reason.NOT_YET_VALID, "token is issued in the future")
