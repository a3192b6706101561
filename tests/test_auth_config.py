"""`[auth]` validation: every refusal names the file, the line and the key, and no key material
ever appears in a message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.auth.config import AuthConfig, JwksConfig, ScopesConfig
from gateway.config import ConfigError
from tests.auth_support import (
    AUDIENCE,
    ISSUER,
    SECRET,
    auth_config,
    ec_key,
    hs_provider,
    provider,
    public_pem,
    rsa_key,
)

MARK = "# <-"  # ends the line an error must point at


def test_no_auth_section_means_auth_off(tmp_path: Path) -> None:
    assert auth_config(tmp_path, "") == AuthConfig()
    assert AuthConfig().enabled is False


def test_defaults_and_values(tmp_path: Path) -> None:
    config = auth_config(tmp_path, f"""
[auth]
enabled = true
{hs_provider()}
[[auth.providers]]
name = "remote"
issuer = "https://idp.example/"
audiences = ["{AUDIENCE}", "other"]
algorithms = ["RS256", "PS256"]
jwks_url = "https://idp.example/.well-known/jwks.json"
jwks_ttl_s = 600

[auth.scopes]
manage = "ops"
""")
    assert config.enabled and config.leeway_s == 30 and config.required_claims == ("exp",)
    assert config.token_cache_size == 10_000 and config.scope_claim == "scope"
    assert config.scopes == ScopesConfig(predict="predict", read="predict", manage="ops",
                                         admin="admin")
    local, remote = config.providers
    assert (local.name, local.algorithms, local.key, local.jwks) == (
        "demo", ("HS256",), SECRET.encode(), None)
    assert remote.key is None and remote.jwks == JwksConfig(
        "https://idp.example/.well-known/jwks.json", ttl_s=600, min_refresh_s=30)
    assert SECRET not in repr(config)


def test_secret_env_is_read_at_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_TEST_SECRET", SECRET + "-from-env")
    config = auth_config(tmp_path, "[auth]\n" + provider('algorithms = ["HS384"]',
                                                         'secret_env = "GATEWAY_TEST_SECRET"'))
    assert config.providers[0].key == (SECRET + "-from-env").encode()


# One-line TOML strings (JSON's escapes are TOML's), so the marked line is the key's line.
def test_a_key_file_secret_loses_its_trailing_newline(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text(SECRET + "\n")
    config = auth_config(tmp_path, "[auth]\n" + provider('algorithms = ["HS256"]',
                                                         'key_file = "secret.txt"'))
    assert config.providers[0].key == SECRET.encode()


RSA_PEM = json.dumps(public_pem(rsa_key()))
EC_PEM = json.dumps(public_pem(ec_key()))
PRIVATE_PEM = json.dumps("-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n")


@pytest.mark.parametrize(("body", "key", "message"), [
    (provider('algorithms = ["none"]  ' + MARK, f'secret = "{SECRET}"'),
     "auth.providers[0].algorithms", "'none' is never accepted"),
    (provider('algorithms = ["HS256", "RS256"]  ' + MARK, f'public_key = {RSA_PEM}'),
     "auth.providers[0].algorithms", "HS* and asymmetric algorithms cannot share a provider"),
    (provider('algorithms = ["RS257"]  ' + MARK, f'public_key = {RSA_PEM}'),
     "auth.providers[0].algorithms", "unknown algorithm 'RS257'"),
    (provider('algorithms = ["HS256"]', f'secret = "{SECRET}"', 'secret_env = "X"  ' + MARK),
     "auth.providers[0].secret_env", "exactly one key source"),
    (provider('algorithms = ["HS256"]').replace("[[auth.providers]]",
                                               "[[auth.providers]]  " + MARK),
     "auth.providers[0]", "exactly one key source"),
    (provider('algorithms = ["HS256"]', 'secret = "short"  ' + MARK),
     "auth.providers[0].secret", "below the minimum recommended length of 32 bytes"),
    (provider('algorithms = ["HS512"]', f'secret = "{SECRET}"  ' + MARK),
     "auth.providers[0].secret", "of 64 bytes"),
    (provider('algorithms = ["HS256"]', f'secret = {RSA_PEM}  ' + MARK),
     "auth.providers[0].secret", "looks like a PEM"),
    (provider('algorithms = ["RS256"]', f'secret = "{SECRET}"  ' + MARK),
     "auth.providers[0].secret", "RS256 needs a public key"),
    (provider('algorithms = ["HS256"]', f'public_key = {RSA_PEM}  ' + MARK),
     "auth.providers[0].public_key", "HS* algorithms need a secret"),
    (provider('algorithms = ["RS256"]', f'public_key = {PRIVATE_PEM}  ' + MARK),
     "auth.providers[0].public_key", "this is a private key"),
    (provider('algorithms = ["RS256"]', 'public_key = "hello"  ' + MARK),
     "auth.providers[0].public_key", "not a PEM public key"),
    (provider('algorithms = ["RS256", "ES256"]', f'public_key = {RSA_PEM}  ' + MARK),
     "auth.providers[0].public_key", "an RSA key cannot verify ES256"),
    (provider('algorithms = ["ES384"]',
              f'public_key = {EC_PEM}  ' + MARK),
     "auth.providers[0].public_key", "an EC key on secp256r1 cannot verify ES384"),
    (provider('algorithms = ["HS256"]', 'secret_env = "GATEWAY_TEST_UNSET"  ' + MARK),
     "auth.providers[0].secret_env", "GATEWAY_TEST_UNSET is not set"),
    (provider('algorithms = ["RS256"]', 'key_file = "missing.pem"  ' + MARK),
     "auth.providers[0].key_file", "cannot read"),
    (provider('algorithms = ["RS256"]', 'jwks_url = "http://idp.example/jwks"  ' + MARK),
     "auth.providers[0].jwks_url", "expected an https:// URL"),
    (provider('algorithms = ["HS256"]', f'secret = "{SECRET}"', "jwks_ttl_s = 5  " + MARK),
     "auth.providers[0].jwks_ttl_s", "applies only with jwks_url"),
    (provider('algorithms = ["HS256"]', f'secret = "{SECRET}"', "audience = 'x'  " + MARK),
     "auth.providers[0].audience", "unknown key"),
    (provider('algorithms = ["HS256"]', f'secret = "{SECRET}"').replace(
        f'audiences = ["{AUDIENCE}"]', "audiences = []  " + MARK),
     "auth.providers[0].audiences", "non-empty list"),
    (hs_provider() + hs_provider(name="again").replace(
        f'issuer = "{ISSUER}"', f'issuer = "{ISSUER}"  ' + MARK),
     "auth.providers[1].issuer", "another provider has this issuer"),
    ('[auth.scopes]\npredict = "predict everything"  ' + MARK,
     "auth.scopes.predict", "is not a scope name"),
    ('enabled = true  ' + MARK, "auth.enabled", "no [[auth.providers]]"),
])
def test_refusals_name_file_line_and_key(tmp_path: Path, body: str, key: str,
                                         message: str) -> None:
    text = "[server]\nhttp_port = 0\n\n[auth]\n" + body + "\n"
    line = next(n for n, t in enumerate(text.splitlines(), start=1) if t.endswith(MARK))
    with pytest.raises(ConfigError) as caught:
        auth_config(tmp_path, text)
    assert str(caught.value).startswith(f"{tmp_path / 'gateway.toml'}:{line}: {key}: ")
    assert message in str(caught.value)
    key_material = (SECRET, public_pem(rsa_key()).splitlines()[1], "MIIE")
    assert not any(secret in str(caught.value) for secret in key_material)
