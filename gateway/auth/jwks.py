"""A provider's signing keys from its JWKS URL: cached for `ttl_s`, refetched when a token names
an unknown `kid` (key rotation) but at most once per `min_refresh_s`, so a flood of made-up
kids cannot turn the gateway against the identity provider; the last good copy keeps serving
while the JWKS host is down. Refreshing is off the request path: past `REFRESH_AHEAD` of the
TTL a request starts a fetch in the background and goes on with the keys it has, so only the
first request, an unknown `kid`, or a set left past its whole TTL (no traffic) waits for one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Callable
from typing import Any

import aiohttp
import jwt
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from gateway.auth.config import JwksConfig
from gateway.auth.failures import InvalidToken, Reason
from gateway.auth.keys import TrustedKey, is_public_key
from gateway.errors import Unavailable

log = logging.getLogger("gateway.auth")
FETCH_TIMEOUT_S = 5.0
MAX_JWKS_BYTES = 1024 * 1024
REFRESH_AHEAD = 0.8  # of ttl_s
_FROM_JWK: dict[str, Callable[[dict[str, Any]], Any]] = {
    "RSA": RSAAlgorithm.from_jwk, "EC": ECAlgorithm.from_jwk, "OKP": OKPAlgorithm.from_jwk}


class JwksKeys:
    def __init__(self, config: JwksConfig, clock: Callable[[], float]) -> None:
        self._config = config
        self._clock = clock
        self._keys: dict[str, TrustedKey] | None = None  # None until a fetch succeeds
        self._fetched_at = -math.inf
        self._attempted_at = -math.inf
        self._lock = asyncio.Lock()  # one fetch at a time; waiters then reuse its result
        self._background: asyncio.Task[None] | None = None

    async def key(self, kid: str | None) -> TrustedKey:
        if kid is None:
            raise InvalidToken(Reason.UNKNOWN_KEY, "token header names no key (kid)")
        age = self._clock() - self._fetched_at
        if self._keys is None or age >= self._config.ttl_s:
            await self._refresh()
        elif age >= REFRESH_AHEAD * self._config.ttl_s and (
                self._background is None or self._background.done()):
            self._background = asyncio.get_running_loop().create_task(self._refresh())
        if self._keys is not None and kid not in self._keys:
            await self._refresh()  # a rotated key: the one refetch min_refresh_s allows
        if self._keys is None:
            raise Unavailable("the token issuer's signing keys cannot be fetched",
                              retry_after_s=max(1.0, self._config.min_refresh_s))
        found = self._keys.get(kid)
        if found is None:
            raise InvalidToken(Reason.UNKNOWN_KEY, "token signed with an unknown key")
        return found

    async def _refresh(self) -> None:
        async with self._lock:
            now = self._clock()
            if now - self._attempted_at < self._config.min_refresh_s:
                return
            self._attempted_at = now
            try:
                self._keys = parse_jwks(await self._fetch())
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                log.warning("JWKS fetch from %s failed (%s); %s", self._config.url, exc,
                            "keeping the last good copy" if self._keys is not None
                            else "no keys yet")
                return
            self._fetched_at = now

    async def _fetch(self) -> Any:
        timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S)
        # A session per fetch: fetches are minutes apart, and the auth step has no
        # start/close hooks to own a long-lived session.
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(
                self._config.url, allow_redirects=False,
                headers={"Accept": "application/json"}) as reply:
            if reply.status != 200:
                raise ValueError(f"HTTP {reply.status}")
            body = bytearray()
            async for chunk in reply.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise ValueError(f"document exceeds {MAX_JWKS_BYTES} bytes")
        return json.loads(body)


def parse_jwks(document: Any) -> dict[str, TrustedKey]:
    """The usable signing keys by `kid`. Entries that are not public signing keys (private or
    symmetric keys, `use: enc`, unknown types, broken values) are skipped: one bad entry must
    not take its neighbours down."""
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError("not a JWKS document (no \"keys\" list)")
    keys = {}
    for entry in entries:
        if (not isinstance(entry, dict) or not isinstance(entry.get("kid"), str)
                or entry.get("use", "sig") != "sig" or "d" in entry
                or entry.get("kty") not in _FROM_JWK):
            continue
        try:
            key = _FROM_JWK[entry["kty"]](entry)
        except (jwt.PyJWTError, ValueError, TypeError):
            log.warning("JWKS key %r skipped: not a valid %s key", entry["kid"], entry["kty"])
            continue
        algorithm = entry.get("alg")
        if is_public_key(key):
            keys[entry["kid"]] = TrustedKey(key, algorithm if isinstance(algorithm, str) else None)
    return keys
