"""Builds the authentication and authorization steps from `[auth]`."""

from __future__ import annotations

from gateway.auth import AnonymousAuthenticator, Authenticator
from gateway.auth.config import AuthConfig
from gateway.authz import AllowAll, Authorizer


def build_authenticator(config: AuthConfig) -> Authenticator:
    return AnonymousAuthenticator()


def build_authorizer(config: AuthConfig) -> Authorizer:
    return AllowAll()
