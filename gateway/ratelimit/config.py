"""`[redis]` in gateway.toml: where limits and policies are shared across replicas, and how
hard the gateway leans on it when it misbehaves."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from gateway.ratelimit.redis_tls import TLS_KEYS, RedisTls, parse_redis_tls
from gateway.tomlconfig import Table


@dataclass(frozen=True)
class RedisConfig:
    url: str
    timeout_ms: int = 50  # bounds every Redis call: a slow Redis must not slow every request
    breaker_failures: int = 3  # consecutive failed calls that open the breaker
    breaker_reset_s: float = 5.0  # how long it stays open before one probe call
    # Leases (gateway/ratelimit/leases.py): a process takes at most this share of a rule's
    # burst at once, so replicas x share x burst bounds how far a window can overshoot; 0: off,
    # every request is checked in Redis.
    lease_max_share: float = 0.05
    lease_ttl_ms: int = 1000  # unspent leased units go back to Redis after this long
    # What the deployment is (gateway/ratelimit/connect.py builds the client): "single" (the
    # server `url` names), "cluster" (`url` is one node; `nodes` more to start from, in case
    # it is down) or "sentinel" (the `sentinels` say where the master `service_name` runs;
    # `url` then carries only its credentials and database).
    mode: str = "single"
    nodes: tuple[tuple[str, int], ...] = ()
    sentinels: tuple[tuple[str, int], ...] = ()
    service_name: str = ""
    sentinel_password: str = ""  # for the sentinels themselves, from sentinel_password_env
    tls: RedisTls = field(default_factory=RedisTls)  # rediss://: CA, client certificate


def parse_redis_config(t: Table) -> RedisConfig | None:
    """`url`, or `url_env` naming the environment variable that holds it (keeps passwords out
    of the file). Neither: no Redis, so no shared limits."""
    t.expect(("url", "url_env", "timeout_ms", "breaker_failures", "breaker_reset_s",
              "lease_max_share", "lease_ttl_ms", *DEPLOYMENT_KEYS, *TLS_KEYS))
    d = RedisConfig("")
    url = t.text("url", "")
    url_env = t.text("url_env", "")
    if url and url_env:
        raise t.error("url_env", "set either url or url_env, not both")
    if url_env:
        url = os.environ.get(url_env, "")
        if not url:
            raise t.error("url_env", f"environment variable {url_env} is not set or empty")
    config = RedisConfig(
        url=url,
        timeout_ms=t.integer("timeout_ms", d.timeout_ms, minimum=1),
        breaker_failures=t.integer("breaker_failures", d.breaker_failures, minimum=1),
        breaker_reset_s=t.number("breaker_reset_s", d.breaker_reset_s, minimum=0.001),
        lease_max_share=t.number("lease_max_share", d.lease_max_share, minimum=0),
        lease_ttl_ms=t.integer("lease_ttl_ms", d.lease_ttl_ms, minimum=10, maximum=60_000),
        **_deployment(t, url),
        tls=parse_redis_tls(t, url),
    )
    if config.lease_max_share > 1:
        raise t.error("lease_max_share", "expected a share of the burst from 0 to 1, got "
                      f"{config.lease_max_share:g}")
    t.finish()
    if not url and t.data and config.mode != "sentinel":
        raise t.error(None, "set url or url_env (the other keys need a Redis to apply to)")
    if url and not url.startswith(("redis://", "rediss://", "unix://")):
        raise t.error("url_env" if url_env else "url",
                      "expected a redis://, rediss:// or unix:// URL")
    if url:
        _check_url_for_mode(t, "url_env" if url_env else "url", url, config.mode)
    return config if url or config.sentinels else None


DEPLOYMENT_KEYS = ("mode", "nodes", "sentinels", "service_name", "sentinel_password_env")
_ONLY_IN = {"nodes": "cluster", "sentinels": "sentinel", "service_name": "sentinel",
            "sentinel_password_env": "sentinel"}


def _deployment(t: Table, url: str) -> dict[str, Any]:
    """`mode` and the keys that go with it; a key of another mode is an error, not ignored."""
    mode = t.text("mode", "single", choices=("single", "cluster", "sentinel"))
    for key, its_mode in _ONLY_IN.items():
        if key in t and mode != its_mode:
            raise t.error(key, f'applies only with mode = "{its_mode}"')
    fields: dict[str, Any] = {"mode": mode, "nodes": _addresses(t, "nodes"),
                              "sentinels": _addresses(t, "sentinels")}
    if mode == "sentinel":
        if not fields["sentinels"]:
            raise t.error("sentinels", 'missing; expected the sentinels, ["host:port", ...]')
        fields["service_name"] = t.text("service_name")
        password_env = t.text("sentinel_password_env", "")
        if password_env:
            fields["sentinel_password"] = os.environ.get(password_env, "")
            if not fields["sentinel_password"]:
                raise t.error("sentinel_password_env",
                              f"environment variable {password_env} is not set or empty")
    elif mode == "cluster" and not url:
        raise t.error("mode", "a cluster needs url or url_env: one of its nodes")
    return fields


def _addresses(t: Table, key: str) -> tuple[tuple[str, int], ...]:
    addresses = []
    for value in t.texts(key):
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise t.error(key, f"expected host:port, got {value!r}")
        addresses.append((host.strip("[]"), int(port)))
    return tuple(addresses)


def _check_url_for_mode(t: Table, key: str, url: str, mode: str) -> None:
    """A cluster has only database 0 and no Unix sockets; a sentinel-managed master's address
    comes from the sentinels, so a host in the URL would be a second, ignored truth."""
    parts = urlparse(url)
    if mode == "cluster" and (parts.scheme == "unix" or parts.path.strip("/") not in ("", "0")):
        raise t.error(key, "a cluster URL is redis:// or rediss:// with database 0")
    if mode == "sentinel" and (parts.scheme == "unix" or parts.hostname or parts.port):
        raise t.error(key, "with sentinels the URL carries only credentials and database "
                           "(redis://:PASSWORD@/DB): the sentinels say where the master is")
