"""A trusted token issuer at run time: its claims to check and where its keys come from."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from gateway.auth.config import ProviderConfig
from gateway.auth.jwks import JwksKeys
from gateway.auth.keys import TrustedKey


class KeySource(Protocol):
    async def key(self, kid: str | None) -> TrustedKey:
        """The key a token's header names; a static source has one key whatever the kid."""


@dataclass(frozen=True, slots=True)
class StaticKey:
    trusted: TrustedKey

    async def key(self, kid: str | None) -> TrustedKey:
        return self.trusted


@dataclass(frozen=True, slots=True)
class Provider:
    issuer: str
    audiences: tuple[str, ...]
    algorithms: tuple[str, ...]
    keys: KeySource


def build_provider(config: ProviderConfig, clock: Callable[[], float]) -> Provider:
    keys: KeySource
    if config.jwks is not None:
        keys = JwksKeys(config.jwks, clock)
    else:
        assert config.key is not None  # the config parser requires exactly one key source
        keys = StaticKey(TrustedKey(config.key))
    return Provider(config.issuer, config.audiences, config.algorithms, keys)
