"""Pipeline step 1, authentication: who is calling. `JwtAuthenticator` when `[auth]` is on,
else `AnonymousAuthenticator`; `factory.build_authenticator` picks."""

from __future__ import annotations

from types import MappingProxyType
from typing import Protocol

from gateway.types import Principal, RequestContext

#: Who calls when auth is off and no client certificate says more.
ANONYMOUS = Principal()


class Authenticator(Protocol):
    async def authenticate(self, context: RequestContext) -> Principal: ...


class AnonymousAuthenticator:
    """Auth off (the embedded default): every caller is the anonymous principal, except that
    under mTLS the verified client certificate's subject is the caller, as subject and `sub`
    claim, so that limits and routes keyed by `sub` count and match it as they would a
    token's subject (docs/security.md)."""

    async def authenticate(self, context: RequestContext) -> Principal:
        subject = context.tls_subject
        if subject is None:
            return ANONYMOUS
        return Principal(subject=subject, claims=MappingProxyType({"sub": subject}))
