"""Pipeline step 2, authorization: may this principal use this verb on this model."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, Protocol

from gateway.auth.failures import REALM
from gateway.errors import PermissionDenied
from gateway.types import Principal


class Verb(enum.Enum):
    PREDICT = "predict"
    READ = "read"  # status and metadata
    MANAGE = "manage"  # add, replace, delete models
    ADMIN = "admin"  # policy API


class Authorizer(Protocol):
    def authorize(self, principal: Principal, verb: Verb, model: str | None) -> None:
        """Raise `PermissionDenied` if the principal may not."""


class AllowAll:
    """No authorization configured: everything is allowed."""

    def authorize(self, principal: Principal, verb: Verb, model: str | None) -> None:
        return None


class ScopeAuthorizer:
    """OAuth scopes from the verified token decide. Each verb needs its configured scope,
    either bare (every model) or as `<scope>:<model>` (that model only); a bare scope is
    needed where no single model is named (listing models, uploading a new one). `read`
    is accepted for READ whatever scope READ is configured to need."""

    def __init__(self, required: Mapping[Verb, str], scope_claim: str) -> None:
        self._required = dict(required)
        self._accepted = {verb: tuple(dict.fromkeys((scope, "read") if verb is Verb.READ
                                                    else (scope,)))
                          for verb, scope in required.items()}
        self._claims = tuple(dict.fromkeys((scope_claim, "scp")))

    def authorize(self, principal: Principal, verb: Verb, model: str | None) -> None:
        held = scopes_of(principal.claims, self._claims)
        for scope in self._accepted[verb]:
            if scope in held or (model is not None and f"{scope}:{model}" in held):
                return
        needed = self._required[verb]
        if model is None:
            message = f"{verb.value} needs scope {needed!r}"
        else:
            message = (f"{verb.value} on model {model!r} needs scope {needed!r} "
                       f"or {needed + ':' + model!r}")
        # Only the configured scope (checked header-safe at load) goes into the header.
        challenge = f'Bearer realm="{REALM}", error="insufficient_scope", scope="{needed}"'
        raise PermissionDenied(message, headers={"WWW-Authenticate": challenge})


def scopes_of(claims: Mapping[str, Any], names: tuple[str, ...]) -> set[str]:
    """Every scope the named claims hold, each a space-separated string (RFC 8693 `scope`)
    or a list (as some providers send `scp`)."""
    held: set[str] = set()
    for name in names:
        value = claims.get(name)
        if isinstance(value, str):
            held.update(value.split())
        elif isinstance(value, list):
            held.update(v for v in value if isinstance(v, str))
    return held
