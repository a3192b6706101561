"""Keys from a JWKS URL, served by a real aiohttp server on 127.0.0.1: rotation, rate-limited
refetch, TTL, and the last good copy while the JWKS host is down."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from gateway.auth.factory import build_authenticator
from gateway.auth.failures import Reason
from gateway.auth.jwks import REFRESH_AHEAD, parse_jwks
from gateway.auth.jwt_authenticator import JwtAuthenticator
from gateway.errors import Unauthenticated, Unavailable
from tests.auth_support import (
    FakeClock,
    auth_config,
    bearer,
    claims,
    context,
    ec_key,
    ed_key,
    provider,
    rsa_key,
    sign,
)
from tests.waiting import wait_until

TTL_S = 300
MIN_REFRESH_S = 30


def jwk(kid: str, n: int = 0, **extra: Any) -> dict[str, Any]:
    key = RSAAlgorithm.to_jwk(rsa_key(n).public_key(), as_dict=True)
    return {**key, "kid": kid, "use": "sig", **extra}


class JwksHost:
    """The identity provider's JWKS endpoint: what it serves and how often it was asked."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = [jwk("k1")]
        self.fetches = 0
        self.served = 0
        self.hold: asyncio.Event | None = None  # set: answers wait until it is set

    async def handle(self, request: web.Request) -> web.Response:
        self.fetches += 1
        if self.hold is not None:
            await self.hold.wait()
        self.served += 1
        return web.json_response({"keys": self.keys})


@pytest.fixture
def host() -> JwksHost:
    return JwksHost()


@pytest.fixture
async def server(host: JwksHost, aiohttp_server: Callable[..., Any]) -> TestServer:
    app = web.Application()
    app.router.add_get("/jwks.json", host.handle)
    return await aiohttp_server(app)  # type: ignore[no-any-return]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def authenticator(tmp_path: Path, server: TestServer, clock: FakeClock) -> JwtAuthenticator:
    # No verified-token cache here: every request must reach the key lookup.
    url = server.make_url("/jwks.json")
    config = auth_config(tmp_path, "[auth]\nenabled = true\ntoken_cache_size = 0\n" + provider(
        'algorithms = ["RS256", "RS384"]', f'jwks_url = "{url}"', f"jwks_ttl_s = {TTL_S}",
        f"jwks_min_refresh_s = {MIN_REFRESH_S}"))
    authenticator = build_authenticator(config, clock)
    assert isinstance(authenticator, JwtAuthenticator)
    return authenticator


def token(clock: FakeClock, kid: str | None, n: int = 0, algorithm: str = "RS256") -> str:
    return sign(claims(clock.now), rsa_key(n), algorithm, kid=kid)


async def accepts(authenticator: JwtAuthenticator, token: str) -> bool:
    try:
        await authenticator.authenticate(context(bearer(token)))
    except Unauthenticated:
        return False
    return True


async def test_a_known_kid_verifies_with_one_fetch(authenticator: JwtAuthenticator,
                                                   clock: FakeClock, host: JwksHost) -> None:
    assert await accepts(authenticator, token(clock, "k1"))
    assert await accepts(authenticator, token(clock, "k1"))
    assert host.fetches == 1


async def test_an_unknown_kid_refetches_once_then_is_refused(
        authenticator: JwtAuthenticator, clock: FakeClock, host: JwksHost) -> None:
    assert await accepts(authenticator, token(clock, "k1"))
    clock.advance(MIN_REFRESH_S)
    assert not await accepts(authenticator, token(clock, "k2", n=1))
    assert host.fetches == 2
    assert not await accepts(authenticator, token(clock, "k2", n=1))
    assert host.fetches == 2  # within min_refresh_s of the last fetch: no new one
    assert authenticator.reasons == {Reason.UNKNOWN_KEY: 2}


async def test_a_rotated_key_is_accepted_once_a_refetch_is_allowed(
        authenticator: JwtAuthenticator, clock: FakeClock, host: JwksHost) -> None:
    assert await accepts(authenticator, token(clock, "k1"))
    host.keys = [jwk("k1"), jwk("k2", n=1)]
    clock.advance(MIN_REFRESH_S - 1)
    assert not await accepts(authenticator, token(clock, "k2", n=1))  # rate-limited
    assert host.fetches == 1
    clock.advance(1)
    assert await accepts(authenticator, token(clock, "k2", n=1))
    assert await accepts(authenticator, token(clock, "k1"))
    assert host.fetches == 2


async def test_concurrent_unknown_kids_share_one_fetch(
        authenticator: JwtAuthenticator, clock: FakeClock, host: JwksHost) -> None:
    assert await accepts(authenticator, token(clock, "k1"))
    clock.advance(MIN_REFRESH_S)
    results = await asyncio.gather(*(accepts(authenticator, token(clock, f"made-up-{i}"))
                                     for i in range(10)))
    assert results == [False] * 10
    assert host.fetches == 2


async def test_after_the_ttl_a_retired_key_stops_verifying(
        authenticator: JwtAuthenticator, clock: FakeClock, host: JwksHost) -> None:
    """No request came in the refresh-ahead window: past the TTL the request waits."""
    assert await accepts(authenticator, token(clock, "k1"))
    host.keys = [jwk("k2", n=1)]
    clock.advance(REFRESH_AHEAD * TTL_S - 1)
    assert await accepts(authenticator, token(clock, "k1"))  # the cached set, still fresh
    assert host.fetches == 1
    clock.advance(TTL_S)
    assert not await accepts(authenticator, token(clock, "k1"))
    assert await accepts(authenticator, token(clock, "k2", n=1))
    assert host.fetches == 2


async def test_the_refresh_before_expiry_does_not_hold_the_request(
        authenticator: JwtAuthenticator, clock: FakeClock, host: JwksHost) -> None:
    assert await accepts(authenticator, token(clock, "k1"))
    host.keys = [jwk("k1"), jwk("k2", n=1)]
    host.hold = asyncio.Event()
    clock.advance(REFRESH_AHEAD * TTL_S)
    # answered from the cached set while the host still holds the refetch
    assert await accepts(authenticator, token(clock, "k1"))
    await wait_until(lambda: host.fetches == 2)
    assert await accepts(authenticator, token(clock, "k1"))  # one refetch in flight, no more
    host.hold.set()
    # the refreshed set arrives without a request waiting: the rotated key needs no fetch
    await wait_until(lambda: host.served == 2)
    assert await accepts(authenticator, token(clock, "k2", n=1))
    assert host.fetches == 2


async def test_the_last_good_copy_serves_while_the_host_is_down(
        authenticator: JwtAuthenticator, clock: FakeClock, server: TestServer,
        caplog: pytest.LogCaptureFixture) -> None:
    assert await accepts(authenticator, token(clock, "k1"))
    await server.close()
    clock.advance(TTL_S)
    with caplog.at_level(logging.WARNING, logger="gateway.auth"):
        assert await accepts(authenticator, token(clock, "k1"))
    assert "keeping the last good copy" in caplog.text
    assert not await accepts(authenticator, token(clock, "k2", n=1))


async def test_no_keys_yet_and_the_host_down_is_503(authenticator: JwtAuthenticator,
                                                    clock: FakeClock,
                                                    server: TestServer) -> None:
    await server.close()
    with pytest.raises(Unavailable) as caught:
        await authenticator.authenticate(context(bearer(token(clock, "k1"))))
    assert caught.value.reply_headers()["Retry-After"] == str(MIN_REFRESH_S)


async def test_a_token_without_kid_is_refused(authenticator: JwtAuthenticator,
                                              clock: FakeClock, host: JwksHost) -> None:
    assert not await accepts(authenticator, token(clock, None))
    assert authenticator.reasons == {Reason.UNKNOWN_KEY: 1}
    assert host.fetches == 0


async def test_a_key_published_for_one_algorithm_verifies_no_other(
        authenticator: JwtAuthenticator, clock: FakeClock, host: JwksHost) -> None:
    host.keys = [jwk("k1", alg="RS256")]
    assert not await accepts(authenticator, token(clock, "k1", algorithm="RS384"))
    assert authenticator.reasons == {Reason.UNKNOWN_KEY: 1}
    assert await accepts(authenticator, token(clock, "k1", algorithm="RS256"))


def test_parse_keeps_only_public_signing_keys() -> None:
    private = RSAAlgorithm.to_jwk(rsa_key(), as_dict=True)
    document = {"keys": [
        jwk("rsa"),
        {**ECAlgorithm.to_jwk(ec_key().public_key(), as_dict=True), "kid": "ec"},
        {**OKPAlgorithm.to_jwk(ed_key().public_key(), as_dict=True), "kid": "ed"},
        jwk("encryption", use="enc"),
        {**private, "kid": "private"},
        {"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA", "kid": "hmac"},
        {"kty": "RSA", "n": 12, "e": "AQAB", "kid": "broken"},
        {"kty": "RSA", "kid": "incomplete"},
        jwk("no-kid") | {"kid": None},
        "not a key",
    ]}
    assert set(parse_jwks(document)) == {"rsa", "ec", "ed"}
    assert parse_jwks({"keys": [jwk("a", alg="RS384")]})["a"].algorithm == "RS384"
    for bad in ({}, {"keys": "k1"}, ["keys"]):
        with pytest.raises(ValueError, match="not a JWKS document"):
            parse_jwks(bad)
