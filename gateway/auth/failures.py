"""Why a token was refused: a closed set of reasons (metric labels) and the 401 each becomes.

Descriptions are fixed strings, never echoes of the token: they go into a header, and a
client-chosen value there could inject quotes or reveal what the gateway trusts.
"""

from __future__ import annotations

import enum

from gateway.errors import Unauthenticated

REALM = "gateway"


class Reason(enum.StrEnum):
    MISSING = "missing"
    MALFORMED_HEADER = "malformed_header"
    TOO_LARGE = "too_large"
    MALFORMED = "malformed"
    UNKNOWN_ISSUER = "unknown_issuer"
    ALGORITHM = "algorithm"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    BAD_AUDIENCE = "bad_audience"
    BAD_ISSUER = "bad_issuer"
    MISSING_CLAIM = "missing_claim"
    INVALID_CLAIM = "invalid_claim"


class InvalidToken(Exception):
    """Raised inside the auth step; the authenticator counts it and answers 401."""

    def __init__(self, reason: Reason, description: str) -> None:
        super().__init__(description)
        self.reason = reason
        self.description = description

    def unauthenticated(self) -> Unauthenticated:
        """RFC 6750 §3: no credentials gets a bare challenge; a bad request or token says why."""
        if self.reason is Reason.MISSING:
            challenge = f'Bearer realm="{REALM}"'
        else:
            code = ("invalid_request" if self.reason is Reason.MALFORMED_HEADER
                    else "invalid_token")
            challenge = (f'Bearer realm="{REALM}", error="{code}", '
                         f'error_description="{self.description}"')
        return Unauthenticated(self.description, headers={"WWW-Authenticate": challenge})
