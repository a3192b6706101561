"""The JWT auth step: bearer token → verified-token cache → full verification → principal."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from types import MappingProxyType

from gateway.auth.extract import bearer_token
from gateway.auth.failures import InvalidToken
from gateway.auth.jwt_verifier import JwtVerifier
from gateway.auth.token_cache import VerifiedTokenCache
from gateway.telemetry import spans
from gateway.types import Principal, RequestContext


class JwtAuthenticator:
    def __init__(self, verifier: JwtVerifier, cache: VerifiedTokenCache,
                 clock: Callable[[], float]) -> None:
        self.verifier = verifier
        self.cache = cache
        self._clock = clock
        #: Refusals by `Reason`, for metrics and tests.
        self.reasons: Counter[str] = Counter()

    async def authenticate(self, context: RequestContext) -> Principal:
        with spans.step("authenticate") as span:
            try:
                token = bearer_token(context.headers)
                now = self._clock()
                principal = self.cache.get(token, now)
                span.set_attribute("gateway.auth.cached", principal is not None)
                if principal is None:
                    claims = await self.verifier.verify(token, now)
                    principal = Principal(subject=claims["sub"], claims=MappingProxyType(claims))
                    if "exp" in claims:  # a token without exp would never leave the cache
                        self.cache.put(token, principal, expires_at=claims["exp"])
                return principal
            except InvalidToken as exc:
                self.reasons[exc.reason] += 1
                span.set_attribute("gateway.auth.failure", exc.reason.value)
                raise exc.unauthenticated() from None
