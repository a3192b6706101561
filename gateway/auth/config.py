"""`[auth]` in gateway.toml: JWT providers and scope rules, parsed and key-checked once, frozen.

Keys are read and checked here (env vars, files, PEM parsing, lengths, algorithm fit), so a
bad key stops the gateway at start with file, line and key, never on a request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from gateway.auth.keys import (
    ALGORITHMS,
    HMAC_ALGORITHMS,
    UnusableKey,
    VerifyingKey,
    check_key,
    load_public_key,
    secret_from_env,
)
from gateway.tomlconfig import Table, keys_of

KEY_SOURCES = ("secret", "secret_env", "key_file", "public_key", "jwks_url")
_SECRET_SOURCES = ("secret", "secret_env")
_PUBLIC_SOURCES = ("public_key", "jwks_url")
_JWKS_KEYS = ("jwks_ttl_s", "jwks_min_refresh_s")
_PROVIDER_KEYS = ("name", "issuer", "audiences", "algorithms", *KEY_SOURCES, *_JWKS_KEYS)
#: RFC 6749 §3.3 scope-token: printable ASCII but space, `"` and `\` (safe in a header).
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
_LOOPBACK = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True)
class JwksConfig:
    url: str
    ttl_s: float = 300.0
    min_refresh_s: float = 30.0


@dataclass(frozen=True)
class ProviderConfig:
    """One trusted issuer; exactly one of `key` (a secret or public key) and `jwks`."""

    name: str
    issuer: str
    audiences: tuple[str, ...]
    algorithms: tuple[str, ...]
    key: VerifyingKey | None = field(default=None, repr=False)
    jwks: JwksConfig | None = None


@dataclass(frozen=True)
class ScopesConfig:
    """The scope each verb needs; `<scope>:<model>` grants it on that model only."""

    predict: str = "predict"
    read: str = "predict"
    manage: str = "admin"
    admin: str = "admin"


@dataclass(frozen=True)
class AuthConfig:
    enabled: bool = False
    leeway_s: float = 30.0
    required_claims: tuple[str, ...] = ("exp",)
    token_cache_size: int = 10_000
    scope_claim: str = "scope"
    providers: tuple[ProviderConfig, ...] = ()
    scopes: ScopesConfig = ScopesConfig()


def parse_auth_config(t: Table, base_dir: Path) -> AuthConfig:
    t.expect(keys_of(AuthConfig))
    d = AuthConfig()
    providers: list[ProviderConfig] = []
    for p in t.array("providers"):
        provider = _provider(p, base_dir)
        for attribute in ("name", "issuer"):
            if any(getattr(o, attribute) == getattr(provider, attribute) for o in providers):
                raise p.error(attribute, f"another provider has this {attribute}; a token's "
                              "issuer must pick exactly one provider")
        providers.append(provider)
    config = AuthConfig(
        enabled=t.flag("enabled", d.enabled),
        leeway_s=t.number("leeway_s", d.leeway_s, minimum=0),
        required_claims=(t.texts("required_claims") if "required_claims" in t
                         else d.required_claims),
        token_cache_size=t.integer("token_cache_size", d.token_cache_size, minimum=0),
        scope_claim=t.text("scope_claim", d.scope_claim),
        providers=tuple(providers),
        scopes=_scopes(t.table("scopes")),
    )
    if config.enabled and not providers:
        raise t.error("enabled", "auth is enabled but no [[auth.providers]] is configured")
    t.finish()
    return config


def _scopes(t: Table) -> ScopesConfig:
    t.expect(keys_of(ScopesConfig))
    d = ScopesConfig()
    values = {verb: t.text(verb, getattr(d, verb)) for verb in ("predict", "read", "manage",
                                                                  "admin")}
    for verb, scope in values.items():
        if not _SCOPE_TOKEN.fullmatch(scope):
            raise t.error(verb, f"{scope!r} is not a scope name (printable ASCII; no spaces, "
                          "quotes or backslashes)")
    t.finish()
    return ScopesConfig(**values)


def _provider(p: Table, base_dir: Path) -> ProviderConfig:
    p.expect(_PROVIDER_KEYS)
    name = p.text("name")
    issuer = p.text("issuer")
    audiences = p.texts("audiences")
    if not audiences:
        raise p.error("audiences", "expected a non-empty list: tokens must be meant for us")
    algorithms = _algorithms(p)
    sources = [s for s in KEY_SOURCES if s in p]
    if len(sources) != 1:
        found = f" (found {' and '.join(sources)})" if sources else ""
        raise p.error(sources[1] if sources else None,
                      f"give exactly one key source of {', '.join(KEY_SOURCES)}{found}")
    source = sources[0]
    symmetric = algorithms[0] in HMAC_ALGORITHMS
    if symmetric and source in _PUBLIC_SOURCES:
        raise p.error(source, f"{source} holds public keys; HS* algorithms need a secret "
                      "(secret, secret_env or key_file)")
    if not symmetric and source in _SECRET_SOURCES:
        raise p.error(source, f"{source} is an HMAC secret; {algorithms[0]} needs a public "
                      "key (public_key, key_file or jwks_url)")
    if source == "jwks_url":
        config = ProviderConfig(name, issuer, audiences, algorithms, jwks=_jwks(p))
    else:
        for key in _JWKS_KEYS:
            if key in p:
                raise p.error(key, "applies only with jwks_url")
        config = ProviderConfig(name, issuer, audiences, algorithms,
                                key=_static_key(p, source, symmetric, algorithms, base_dir))
    p.finish()
    return config


def _algorithms(p: Table) -> tuple[str, ...]:
    algorithms = p.texts("algorithms")
    if not algorithms:
        raise p.error("algorithms", f"expected a non-empty list from {', '.join(ALGORITHMS)}")
    for algorithm in algorithms:
        if algorithm.lower() == "none":
            raise p.error("algorithms", "'none' is never accepted: an unsigned token proves "
                          "nothing")
        if algorithm not in ALGORITHMS:
            raise p.error("algorithms", f"unknown algorithm {algorithm!r} (accepted: "
                          f"{', '.join(ALGORITHMS)})")
    if len({a in HMAC_ALGORITHMS for a in algorithms}) > 1:
        raise p.error("algorithms", "HS* and asymmetric algorithms cannot share a provider: "
                      "a public key would be accepted as an HMAC secret (key confusion); "
                      "configure two providers")
    return algorithms


def _static_key(p: Table, source: str, symmetric: bool, algorithms: tuple[str, ...],
                base_dir: Path) -> VerifyingKey:
    try:
        raw = _key_bytes(p.text(source), source, base_dir)
        key = raw if symmetric else load_public_key(raw)
        for algorithm in algorithms:
            check_key(algorithm, key)
    except UnusableKey as exc:
        raise p.error(source, str(exc)) from None
    return key


def _key_bytes(value: str, source: str, base_dir: Path) -> bytes:
    if source == "secret_env":
        return secret_from_env(value)
    if source == "key_file":
        path = Path(value) if Path(value).is_absolute() else base_dir / value
        try:
            # A trailing newline from `echo >file` is not part of a secret.
            return path.read_bytes().rstrip(b"\r\n")
        except OSError as exc:
            raise UnusableKey(f"cannot read {path}: {exc.strerror}") from None
    return value.encode()


def _jwks(p: Table) -> JwksConfig:
    url: str = p.text("jwks_url")
    parts = urlsplit(url)
    if not (parts.scheme == "https"
            or (parts.scheme == "http" and parts.hostname in _LOOPBACK)) or not parts.hostname:
        raise p.error("jwks_url", "expected an https:// URL (http:// only on loopback): keys "
                      "fetched in clear text could be swapped on the way")
    d = JwksConfig(url)
    return JwksConfig(url, ttl_s=p.number("jwks_ttl_s", d.ttl_s, minimum=1),
                      min_refresh_s=p.number("jwks_min_refresh_s", d.min_refresh_s, minimum=0))
