"""Finds the bearer token in a request's headers, whichever front door the request came through.

REST passes aiohttp's case-insensitive headers, gRPC its text metadata in the same kind of
multidict (`gateway.grpc.calls.headers_of`); both keep a repeated header, which iterating
catches: two `Authorization` headers are refused on either door, never one picked.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from multidict import MultiMapping

from gateway.auth.failures import InvalidToken, Reason

#: Real tokens are a few hundred bytes to a few KiB; beyond this, refuse before any parsing.
MAX_TOKEN_BYTES = 8 * 1024
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")  # RFC 6750 §2.1


def bearer_token(headers: Mapping[str, str]) -> str:
    values = (headers.getall("Authorization", []) if isinstance(headers, MultiMapping)
              else [value for key, value in headers.items() if key.lower() == "authorization"])
    if not values:
        raise InvalidToken(Reason.MISSING, "a bearer token is required")
    if len(values) > 1:
        raise InvalidToken(Reason.MALFORMED_HEADER, "more than one Authorization header")
    scheme, _, token = values[0].strip().partition(" ")
    if scheme.lower() != "bearer":
        raise InvalidToken(Reason.MALFORMED_HEADER,
                           "the Authorization header must be 'Bearer <token>'")
    token = token.strip()
    if len(token) > MAX_TOKEN_BYTES:
        raise InvalidToken(Reason.TOO_LARGE, f"token exceeds {MAX_TOKEN_BYTES} bytes")
    if not _B64TOKEN.fullmatch(token):
        raise InvalidToken(Reason.MALFORMED_HEADER,
                           "the Authorization header must be 'Bearer <token>'")
    return token
