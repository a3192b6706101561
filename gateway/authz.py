"""Pipeline step 2, authorization: may this principal use this verb on this model."""

from __future__ import annotations

import enum
from typing import Protocol

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
