"""Pipeline step 1, authentication: who is calling. `JwtAuthenticator` when `[auth]` is on,
else `AnonymousAuthenticator`; `factory.build_authenticator` picks."""

from __future__ import annotations

from typing import Protocol

from gateway.types import Principal, RequestContext


class Authenticator(Protocol):
    async def authenticate(self, context: RequestContext) -> Principal: ...


class AnonymousAuthenticator:
    """Auth off (the embedded default): every caller is the anonymous principal."""

    _anonymous = Principal()

    async def authenticate(self, context: RequestContext) -> Principal:
        return self._anonymous
