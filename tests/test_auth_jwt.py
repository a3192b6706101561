"""JWT authentication: what is accepted, the attacks that are refused (each with 401 and the
RFC 6750 challenge, counted by reason), and the verified-token cache."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from multidict import CIMultiDict

from gateway.auth.extract import MAX_TOKEN_BYTES
from gateway.auth.factory import build_authenticator
from gateway.auth.failures import Reason
from gateway.auth.jwt_authenticator import JwtAuthenticator
from gateway.errors import Unauthenticated
from gateway.types import Principal
from tests.auth_support import (
    ISSUER,
    FakeClock,
    auth_config,
    b64url,
    bearer,
    claims,
    context,
    ec_key,
    ed_key,
    forge,
    hs_provider,
    provider,
    public_key_provider,
    public_pem,
    rsa_key,
    sign,
)

LEEWAY_S = 30


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def authenticator(tmp_path: Path, clock: FakeClock) -> JwtAuthenticator:
    config = auth_config(tmp_path, f"""
[auth]
enabled = true
leeway_s = {LEEWAY_S}
{hs_provider()}
{public_key_provider("rs", "rs-issuer", '"RS256", "PS256"', rsa_key())}
{public_key_provider("es", "es-issuer", '"ES256"', ec_key())}
{public_key_provider("ed", "ed-issuer", '"EdDSA"', ed_key())}
""")
    authenticator = build_authenticator(config, clock)
    assert isinstance(authenticator, JwtAuthenticator)
    return authenticator


async def refused(authenticator: JwtAuthenticator, headers: Any, reason: Reason) -> str:
    """Asserts a 401 counted under `reason`; returns the WWW-Authenticate challenge."""
    with pytest.raises(Unauthenticated) as caught:
        await authenticator.authenticate(context(headers))
    assert authenticator.reasons == {reason: 1}
    assert caught.value.http_status == 401 and caught.value.grpc_code == "UNAUTHENTICATED"
    return caught.value.headers["WWW-Authenticate"]


async def test_a_valid_token_names_the_principal_and_its_claims(
        authenticator: JwtAuthenticator, clock: FakeClock) -> None:
    principal = await authenticator.authenticate(context(bearer(sign(claims(clock.now)))))
    assert principal.subject == "alice"
    assert principal.claims["scope"] == "predict" and principal.claims["iss"] == ISSUER


@pytest.mark.parametrize(("issuer", "algorithm", "key"), [
    ("rs-issuer", "RS256", rsa_key), ("rs-issuer", "PS256", rsa_key),
    ("es-issuer", "ES256", ec_key), ("ed-issuer", "EdDSA", ed_key)])
async def test_asymmetric_algorithms(authenticator: JwtAuthenticator, clock: FakeClock,
                                     issuer: str, algorithm: str, key: Callable[[], Any]) -> None:
    token = sign(claims(clock.now, iss=issuer, sub=algorithm), key(), algorithm)
    principal = await authenticator.authenticate(context(bearer(token)))
    assert principal.subject == algorithm


async def test_rs256_with_a_key_file_relative_to_the_config(tmp_path: Path,
                                                            clock: FakeClock) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "idp.pem").write_text(public_pem(rsa_key()))
    config = auth_config(tmp_path, "[auth]\nenabled = true\n" + provider(
        'algorithms = ["RS256"]', 'key_file = "keys/idp.pem"'))
    authenticator = build_authenticator(config, clock)
    token = sign(claims(clock.now), rsa_key(), "RS256")
    assert (await authenticator.authenticate(context(bearer(token)))).subject == "alice"
    with pytest.raises(Unauthenticated):  # the same claims signed by another key
        await authenticator.authenticate(context(bearer(sign(claims(clock.now), rsa_key(1),
                                                             "RS256"))))


async def test_alg_none_is_refused(authenticator: JwtAuthenticator, clock: FakeClock) -> None:
    token = forge({"alg": "none", "typ": "JWT"}, claims(clock.now))
    challenge = await refused(authenticator, bearer(token), Reason.ALGORITHM)
    assert challenge == ('Bearer realm="gateway", error="invalid_token", '
                         'error_description="token algorithm is not accepted"')


async def test_hs256_signed_with_the_rsa_public_key_is_refused(
        authenticator: JwtAuthenticator, clock: FakeClock) -> None:
    """The classic key confusion: the public key's PEM bytes used as an HMAC secret."""
    unsigned = forge({"alg": "HS256", "typ": "JWT"},
                     claims(clock.now, iss="rs-issuer")).rsplit(".", 1)[0]
    mac = hmac.new(public_pem(rsa_key()).encode(), unsigned.encode(), hashlib.sha256).digest()
    await refused(authenticator, bearer(f"{unsigned}.{b64url(mac)}"), Reason.ALGORITHM)


@pytest.mark.parametrize(("overrides", "reason"), [
    ({"exp": -LEEWAY_S - 1}, Reason.EXPIRED),
    ({"nbf": LEEWAY_S + 5}, Reason.NOT_YET_VALID),
    ({"iat": LEEWAY_S + 5}, Reason.NOT_YET_VALID),
    ({"iss": "https://evil.example"}, Reason.UNKNOWN_ISSUER),
    ({"iss": None}, Reason.UNKNOWN_ISSUER),
    ({"aud": "another-service"}, Reason.BAD_AUDIENCE),
    ({"aud": None}, Reason.MISSING_CLAIM),
    ({"exp": None}, Reason.MISSING_CLAIM),
    ({"sub": None}, Reason.MISSING_CLAIM),
    ({"sub": 42}, Reason.INVALID_CLAIM),
    ({"exp": "tomorrow"}, Reason.INVALID_CLAIM),
])
async def test_bad_claims_are_refused(authenticator: JwtAuthenticator, clock: FakeClock,
                                      overrides: dict[str, Any], reason: Reason) -> None:
    relative = {k: clock.now + v if k in ("exp", "nbf", "iat") and isinstance(v, int) else v
                for k, v in overrides.items()}
    token = sign(claims(clock.now, **relative))
    challenge = await refused(authenticator, bearer(token), reason)
    assert 'error="invalid_token"' in challenge


async def test_nbf_within_the_leeway_is_accepted(authenticator: JwtAuthenticator,
                                                 clock: FakeClock) -> None:
    token = sign(claims(clock.now, nbf=clock.now + LEEWAY_S - 5, exp=clock.now - LEEWAY_S + 5))
    assert (await authenticator.authenticate(context(bearer(token)))).subject == "alice"


async def test_nan_exp_never_means_forever(authenticator: JwtAuthenticator,
                                           clock: FakeClock) -> None:
    token = sign(claims(clock.now, exp=float("nan")))
    await refused(authenticator, bearer(token), Reason.INVALID_CLAIM)


async def test_a_tampered_payload_is_refused(authenticator: JwtAuthenticator,
                                             clock: FakeClock) -> None:
    header, _, signature = sign(claims(clock.now)).split(".")
    promoted = forge({}, claims(clock.now, scope="predict admin")).split(".")[1]
    await refused(authenticator, bearer(f"{header}.{promoted}.{signature}"),
                  Reason.BAD_SIGNATURE)


async def test_a_token_signed_with_another_secret_is_refused(authenticator: JwtAuthenticator,
                                                             clock: FakeClock) -> None:
    token = sign(claims(clock.now), "another-secret-that-is-also-32-bytes-long")
    await refused(authenticator, bearer(token), Reason.BAD_SIGNATURE)


async def test_an_algorithm_the_provider_does_not_allow_is_refused(
        authenticator: JwtAuthenticator, clock: FakeClock) -> None:
    token = sign(claims(clock.now, iss="es-issuer"), rsa_key(), "RS256")
    await refused(authenticator, bearer(token), Reason.ALGORITHM)


async def test_a_token_over_8_kib_is_refused_before_parsing(authenticator: JwtAuthenticator,
                                                            clock: FakeClock) -> None:
    token = sign(claims(clock.now, padding="x" * MAX_TOKEN_BYTES))
    challenge = await refused(authenticator, bearer(token), Reason.TOO_LARGE)
    assert f"exceeds {MAX_TOKEN_BYTES} bytes" in challenge


async def test_a_missing_token_gets_a_bare_challenge(authenticator: JwtAuthenticator) -> None:
    with pytest.raises(Unauthenticated) as caught:
        await authenticator.authenticate(context({"Accept": "application/json"}))
    assert caught.value.headers == {"WWW-Authenticate": 'Bearer realm="gateway"'}
    assert authenticator.reasons == {Reason.MISSING: 1}


@pytest.mark.parametrize("value", [
    "Basic YWxpY2U6c2VjcmV0", "Bearer", "Bearer ", "Bearer two tokens", "Bearer tok\u00e9n",
    "Token abc.def.ghi"])
async def test_a_malformed_header_is_refused(authenticator: JwtAuthenticator,
                                             value: str) -> None:
    challenge = await refused(authenticator, {"Authorization": value}, Reason.MALFORMED_HEADER)
    assert 'error="invalid_request"' in challenge


async def test_garbage_in_a_well_formed_header_is_refused(
        authenticator: JwtAuthenticator) -> None:
    await refused(authenticator, bearer("not.a.jwt"), Reason.MALFORMED)


async def test_two_authorization_headers_are_refused(authenticator: JwtAuthenticator,
                                                     clock: FakeClock) -> None:
    token = sign(claims(clock.now))
    headers = CIMultiDict([("Authorization", f"Bearer {token}"),
                           ("authorization", f"Bearer {token}")])
    await refused(authenticator, headers, Reason.MALFORMED_HEADER)


@pytest.mark.parametrize("name", ["authorization", "AUTHORIZATION", "Authorization"])
async def test_the_header_name_is_case_insensitive(authenticator: JwtAuthenticator,
                                                   clock: FakeClock, name: str) -> None:
    """gRPC metadata arrives as a plain dict with lower-case keys."""
    headers = {name: f"bearer {sign(claims(clock.now))}"}
    assert (await authenticator.authenticate(context(headers))).subject == "alice"


@pytest.fixture
def verifications(authenticator: JwtAuthenticator,
                  monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Tokens that reached full verification (signature check included)."""
    seen: list[str] = []
    verify: Callable[[str, float], Awaitable[dict[str, Any]]] = authenticator.verifier.verify

    async def counting(token: str, now: float) -> dict[str, Any]:
        seen.append(token)
        return await verify(token, now)

    monkeypatch.setattr(authenticator.verifier, "verify", counting)
    return seen


async def test_a_cached_token_is_not_verified_again(authenticator: JwtAuthenticator,
                                                    clock: FakeClock,
                                                    verifications: list[str]) -> None:
    token = sign(claims(clock.now))
    first = await authenticator.authenticate(context(bearer(token)))
    second = await authenticator.authenticate(context(bearer(token)))
    assert second is first
    assert verifications == [token]


async def test_an_expired_cached_token_is_refused(authenticator: JwtAuthenticator,
                                                  clock: FakeClock,
                                                  verifications: list[str]) -> None:
    token = sign(claims(clock.now, exp=clock.now + 60))
    await authenticator.authenticate(context(bearer(token)))
    clock.advance(60 + LEEWAY_S)
    await refused(authenticator, bearer(token), Reason.EXPIRED)
    assert verifications == [token, token]


async def test_the_cache_is_bounded(tmp_path: Path, clock: FakeClock) -> None:
    authenticator = build_authenticator(auth_config(tmp_path, f"""
[auth]
enabled = true
token_cache_size = 2
{hs_provider()}
"""), clock)
    assert isinstance(authenticator, JwtAuthenticator)
    tokens = [sign(claims(clock.now, sub=name)) for name in ("a", "b", "c")]
    for token in tokens:
        await authenticator.authenticate(context(bearer(token)))
    assert len(authenticator.cache) == 2
    assert authenticator.cache.get(tokens[0], clock.now) is None  # least recently used
    assert isinstance(authenticator.cache.get(tokens[2], clock.now), Principal)
