"""`[auth]` in gateway.toml: JWT providers and scope rules (parsed once, frozen)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gateway.tomlconfig import Table


@dataclass(frozen=True)
class AuthConfig:
    enabled: bool = False


def parse_auth_config(t: Table, base_dir: Path) -> AuthConfig:
    config = AuthConfig(enabled=t.flag("enabled", False))
    t.finish()
    return config
