"""Scope-based authorization: which verbs on which models a token's scopes grant."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.auth import AnonymousAuthenticator
from gateway.auth.config import AuthConfig
from gateway.auth.factory import build_authenticator, build_authorizer
from gateway.authz import AllowAll, ScopeAuthorizer, Verb
from gateway.errors import PermissionDenied
from gateway.types import Principal
from tests.auth_support import auth_config, hs_provider

DEFAULT = build_authorizer(AuthConfig(enabled=True))


def principal(**claims: Any) -> Principal:
    return Principal(subject="alice", claims=claims)


def allowed(authorizer: Any, scope: Any, verb: Verb, model: str | None,
            claim: str = "scope") -> bool:
    try:
        authorizer.authorize(principal(**{claim: scope}), verb, model)
    except PermissionDenied:
        return False
    return True


def test_auth_off_allows_everyone() -> None:
    assert isinstance(build_authorizer(AuthConfig()), AllowAll)
    assert isinstance(build_authenticator(AuthConfig()), AnonymousAuthenticator)
    assert isinstance(DEFAULT, ScopeAuthorizer)


def test_predict_without_the_scope_is_denied_naming_the_scope() -> None:
    with pytest.raises(PermissionDenied) as caught:
        DEFAULT.authorize(principal(scope="profile email"), Verb.PREDICT, "demo")
    assert caught.value.http_status == 403 and caught.value.grpc_code == "PERMISSION_DENIED"
    assert caught.value.message == ("predict on model 'demo' needs scope 'predict' "
                                    "or 'predict:demo'")
    assert caught.value.headers == {"WWW-Authenticate": 'Bearer realm="gateway", '
                                    'error="insufficient_scope", scope="predict"'}


def test_no_scope_claim_at_all_is_denied() -> None:
    with pytest.raises(PermissionDenied):
        DEFAULT.authorize(principal(), Verb.READ, "demo")


@pytest.mark.parametrize(("scope", "verb", "model", "expected"), [
    ("predict", Verb.PREDICT, "demo", True),
    ("predict", Verb.READ, "demo", True),  # whoever may predict may read status/metadata
    ("predict", Verb.READ, None, True),  # and list models
    ("predict", Verb.MANAGE, "demo", False),
    ("predict", Verb.MANAGE, None, False),
    ("predict", Verb.ADMIN, None, False),
    ("predict:demo", Verb.PREDICT, "demo", True),
    ("predict:demo", Verb.READ, "demo", True),
    ("predict:demo", Verb.PREDICT, "multi", False),
    ("predict:demo", Verb.PREDICT, "demo2", False),
    ("predict:demo", Verb.READ, None, False),  # listing names every model: a bare scope
    ("read", Verb.READ, "demo", True),
    ("read", Verb.PREDICT, "demo", False),
    ("read:demo", Verb.READ, "multi", False),
    ("admin", Verb.MANAGE, None, True),
    ("admin", Verb.MANAGE, "demo", True),
    ("admin", Verb.ADMIN, None, True),
    ("admin", Verb.PREDICT, "demo", False),
    ("admin:demo", Verb.MANAGE, "demo", True),
    ("admin:demo", Verb.MANAGE, None, False),  # uploading a new model
    ("openid predict email", Verb.PREDICT, "demo", True),
    ("predicts", Verb.PREDICT, "demo", False),
    ("", Verb.PREDICT, "demo", False),
])
def test_default_scopes(scope: str, verb: Verb, model: str | None, expected: bool) -> None:
    assert allowed(DEFAULT, scope, verb, model) is expected


def test_scopes_as_a_list_or_in_scp() -> None:
    assert allowed(DEFAULT, ["openid", "predict"], Verb.PREDICT, "demo")
    assert allowed(DEFAULT, ["predict:demo"], Verb.PREDICT, "demo", claim="scp")
    assert allowed(DEFAULT, "predict", Verb.PREDICT, "demo", claim="scp")
    assert not allowed(DEFAULT, [7, None], Verb.PREDICT, "demo")
    assert not allowed(DEFAULT, {"predict": True}, Verb.PREDICT, "demo")


def test_configured_scopes_and_claim(tmp_path: Path) -> None:
    config = auth_config(tmp_path, f"""
[auth]
enabled = true
scope_claim = "permissions"
{hs_provider()}
[auth.scopes]
predict = "models:infer"
read = "models:read"
manage = "models:write"
""")
    authorizer = build_authorizer(config)
    assert allowed(authorizer, "models:infer", Verb.PREDICT, "demo", claim="permissions")
    assert allowed(authorizer, "models:infer:demo", Verb.PREDICT, "demo", claim="permissions")
    assert not allowed(authorizer, "models:infer", Verb.PREDICT, "demo")  # wrong claim
    assert not allowed(authorizer, "models:infer", Verb.READ, "demo", claim="permissions")
    assert allowed(authorizer, "models:read", Verb.READ, "demo", claim="permissions")
    assert allowed(authorizer, "read", Verb.READ, "demo", claim="permissions")
    assert allowed(authorizer, "models:write", Verb.MANAGE, None, claim="permissions")
    assert allowed(authorizer, "admin", Verb.ADMIN, None, claim="permissions")
    assert not allowed(authorizer, "admin", Verb.MANAGE, None, claim="permissions")
