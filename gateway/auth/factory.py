"""Builds the authentication and authorization steps from `[auth]`."""

from __future__ import annotations

import time
from collections.abc import Callable

from gateway.auth import AnonymousAuthenticator, Authenticator
from gateway.auth.config import AuthConfig
from gateway.auth.jwt_authenticator import JwtAuthenticator
from gateway.auth.jwt_verifier import JwtVerifier
from gateway.auth.providers import build_provider
from gateway.auth.token_cache import VerifiedTokenCache
from gateway.authz import AllowAll, Authorizer, ScopeAuthorizer, Verb


def build_authenticator(config: AuthConfig,
                        clock: Callable[[], float] = time.time) -> Authenticator:
    """`clock` is wall time in seconds (token times are); tests pass a fake one."""
    if not config.enabled:
        return AnonymousAuthenticator()
    providers = [build_provider(p, clock) for p in config.providers]
    verifier = JwtVerifier(providers, config.leeway_s, config.required_claims)
    return JwtAuthenticator(verifier, VerifiedTokenCache(config.token_cache_size), clock)


def build_authorizer(config: AuthConfig) -> Authorizer:
    if not config.enabled:
        return AllowAll()
    s = config.scopes
    return ScopeAuthorizer({Verb.PREDICT: s.predict, Verb.READ: s.read, Verb.MANAGE: s.manage,
                            Verb.ADMIN: s.admin}, config.scope_claim)
