"""`gateway.toml` read once at start into frozen, typed objects; the hot path only reads them."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from adapters.kinds import KINDS
from gateway.auth.config import AuthConfig, parse_auth_config
from gateway.backend import BackendConfig
from gateway.client_address import TrustedProxies
from gateway.codecs.budget import DecodeBudget
from gateway.model_config import BatchingConfig, ModelConfig, parse_batching
from gateway.policy.config import PoliciesConfig, parse_policies_config
from gateway.ratelimit.config import RedisConfig, parse_redis_config
from gateway.ratelimit.limits_config import LimitsConfig, parse_limits_config
from gateway.telemetry.config import TracingConfig, parse_tracing_config
from gateway.tls.config import TlsConfig, parse_tls_config
from gateway.tomlconfig import ConfigError, Source, Table, keys_of

__all__ = ["ConfigError", "GatewayConfig", "GrpcServerConfig", "ServerConfig", "load_config"]

WORKERS_AUTO = "auto"  # [server] workers: one per core this process may run on
MAX_WORKERS = 1024
LOG_FORMATS = ("json", "text")
ROOT_KEYS = ("server", "adapters", "models", "management", "auth", "redis", "policies",
             "tracing", "limits")  # the tables of gateway.toml


@dataclass(frozen=True)
class GrpcServerConfig:
    """HTTP/2 hygiene of the gRPC listener (defaults in line with Envoy's and gRPC's own)."""

    max_concurrent_streams: int = 100
    min_ping_interval_s: float = 10.0  # pings more often than this are answered with GOAWAY
    max_connection_idle_s: float = 300.0
    max_connection_age_s: float = 1800.0  # long-lived channels reconnect and rebalance
    max_connection_age_grace_s: float = 30.0


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    http_port: int = 8080
    grpc_port: int = 8500
    workers: int = 1  # processes serving both ports (`gateway serve --workers`); "auto": cores
    # Counted as bytes arrive, after decompression; gRPC messages have the same cap.
    max_body_bytes: int = 16 * 1024 * 1024
    max_upload_bytes: int = 512 * 1024 * 1024
    request_timeout_ms: int = 30_000
    log_level: str = "info"
    log_format: str = "json"  # application log lines: "json" (shaped like access lines), "text"
    access_log: bool = True
    log_probes: bool = False  # access lines and HTTP server spans for probes and scrapes too
    # Connection hygiene (HTTP)
    max_connections: int = 10_000  # open HTTP connections per process; more are closed
    header_timeout_s: float = 10.0  # to send a request line and headers
    keepalive_timeout_s: float = 60.0  # an idle keep-alive connection closes after this
    max_request_line_bytes: int = 8190
    max_header_bytes: int = 8190  # one header field
    max_headers: int = 100
    # Shedding before a body is read (503 + Retry-After)
    max_inflight: int = 512  # requests in progress in the process
    max_inflight_per_model: int = 128
    # Shutdown (gateway.shutdown): after SIGTERM the listeners accept for drain_delay_s more,
    # then requests in flight have shutdown_timeout_s to finish before the rest get 503.
    drain_delay_s: float = 0.0
    shutdown_timeout_s: float = 30.0
    decode: DecodeBudget = field(default_factory=DecodeBudget)
    grpc: GrpcServerConfig = GrpcServerConfig()
    # Proxies whose `X-Forwarded-For` is believed (gateway/client_address.py): CIDR blocks.
    trusted_proxies: TrustedProxies = field(default_factory=TrustedProxies)
    tls: TlsConfig | None = None  # [server.tls]: HTTPS and gRPC over TLS (gateway/tls)


@dataclass(frozen=True)
class GatewayConfig:
    source: Path
    server: ServerConfig
    adapters: Mapping[str, BackendConfig]
    models: Mapping[str, ModelConfig]
    management_adapter: str | None
    auth: AuthConfig = field(default_factory=AuthConfig)
    redis: RedisConfig | None = None
    policies: PoliciesConfig = field(default_factory=PoliciesConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)

    def models_of(self, adapter: str) -> dict[str, ModelConfig]:
        return {name: m for name, m in self.models.items() if m.adapter == adapter}


def load_config(path: Path) -> GatewayConfig:
    """Read and validate a config file; raises `ConfigError` naming file, line and key."""
    source = Source.read(path)
    root = source.root()
    root.expect(ROOT_KEYS)
    server = _server(root.table("server"))
    adapters = {name: _adapter(name, t, path.parent) for name, t in root.table("adapters").tables()}
    models = {name: _model(name, t, adapters) for name, t in root.table("models").tables()}
    management = root.table("management")
    management.expect(("adapter",))
    manage = management.text("adapter", "")
    if manage and manage not in adapters:
        raise management.error("adapter", f"no adapter named {manage!r} (have: "
                               f"{', '.join(adapters) or 'none'})")
    management.finish()
    if not manage:
        manage = next((n for n, a in adapters.items() if a.kind == "onnx"), "")
    auth = parse_auth_config(root.table("auth"), path.parent)
    redis = parse_redis_config(root.table("redis"))
    policies = parse_policies_config(root.table("policies"), path.parent)
    tracing = parse_tracing_config(root.table("tracing"))
    limits = parse_limits_config(root.table("limits"), redis is not None)
    root.finish()
    return GatewayConfig(path, server, MappingProxyType(adapters), MappingProxyType(models),
                         manage or None, auth, redis, policies, tracing, limits=limits)


def _server(t: Table) -> ServerConfig:
    t.expect(keys_of(ServerConfig))
    d = ServerConfig()
    config = ServerConfig(
        host=t.text("host", d.host),
        http_port=t.integer("http_port", d.http_port, minimum=0, maximum=65535),
        grpc_port=t.integer("grpc_port", d.grpc_port, minimum=0, maximum=65535),
        workers=_workers(t, d.workers),
        max_body_bytes=t.integer("max_body_bytes", d.max_body_bytes, minimum=1024),
        max_upload_bytes=t.integer("max_upload_bytes", d.max_upload_bytes, minimum=1024),
        request_timeout_ms=t.integer("request_timeout_ms", d.request_timeout_ms, minimum=1),
        log_level=t.text("log_level", d.log_level,
                         choices=("debug", "info", "warning", "error")),
        log_format=t.text("log_format", d.log_format, choices=LOG_FORMATS),
        access_log=t.flag("access_log", d.access_log),
        log_probes=t.flag("log_probes", d.log_probes),
        max_connections=t.integer("max_connections", d.max_connections, minimum=1),
        header_timeout_s=t.number("header_timeout_s", d.header_timeout_s, minimum=0.1),
        keepalive_timeout_s=t.number("keepalive_timeout_s", d.keepalive_timeout_s, minimum=0),
        max_request_line_bytes=t.integer("max_request_line_bytes", d.max_request_line_bytes,
                                         minimum=256),
        max_header_bytes=t.integer("max_header_bytes", d.max_header_bytes, minimum=256),
        max_headers=t.integer("max_headers", d.max_headers, minimum=8),
        max_inflight=t.integer("max_inflight", d.max_inflight, minimum=1),
        max_inflight_per_model=t.integer("max_inflight_per_model", d.max_inflight_per_model,
                                         minimum=1),
        drain_delay_s=t.number("drain_delay_s", d.drain_delay_s, minimum=0),
        shutdown_timeout_s=t.number("shutdown_timeout_s", d.shutdown_timeout_s, minimum=0),
        decode=_decode(t.table("decode")),
        grpc=_grpc_server(t.table("grpc")),
        trusted_proxies=_trusted_proxies(t),
        tls=parse_tls_config(t.table("tls")),
    )
    t.finish()
    return config


def _trusted_proxies(t: Table) -> TrustedProxies:
    try:
        return TrustedProxies.parse(t.texts("trusted_proxies"))
    except ValueError as exc:
        raise t.error("trusted_proxies", str(exc)) from None


def _workers(t: Table, default: int) -> int:
    if isinstance(t.data.get("workers"), str):
        t.text("workers", choices=(WORKERS_AUTO,))
        return cores_available()
    return t.integer("workers", default, minimum=1, maximum=MAX_WORKERS)


def cores_available() -> int:
    """The cores this process may run on (its affinity mask: taskset, cgroup cpusets)."""
    return len(os.sched_getaffinity(0))


def _decode(t: Table) -> DecodeBudget:
    t.expect(keys_of(DecodeBudget))
    d = DecodeBudget()
    budget = DecodeBudget(
        max_tensor_elements=t.integer("max_tensor_elements", d.max_tensor_elements, minimum=1),
        max_request_elements=t.integer("max_request_elements", d.max_request_elements,
                                       minimum=1),
        max_batch_rows=t.integer("max_batch_rows", d.max_batch_rows, minimum=1),
        max_dims=t.integer("max_dims", d.max_dims, minimum=1, maximum=64),
        max_bytes_elements=t.integer("max_bytes_elements", d.max_bytes_elements, minimum=1),
    )
    t.finish()
    return budget


def _grpc_server(t: Table) -> GrpcServerConfig:
    t.expect(keys_of(GrpcServerConfig))
    d = GrpcServerConfig()
    config = GrpcServerConfig(
        max_concurrent_streams=t.integer("max_concurrent_streams", d.max_concurrent_streams,
                                         minimum=1),
        min_ping_interval_s=t.number("min_ping_interval_s", d.min_ping_interval_s, minimum=0),
        max_connection_idle_s=t.number("max_connection_idle_s", d.max_connection_idle_s,
                                       minimum=1),
        max_connection_age_s=t.number("max_connection_age_s", d.max_connection_age_s,
                                      minimum=1),
        max_connection_age_grace_s=t.number("max_connection_age_grace_s",
                                            d.max_connection_age_grace_s, minimum=0),
    )
    t.finish()
    return config


def _adapter(name: str, t: Table, base_dir: Path) -> BackendConfig:
    kind = t.text("kind", choices=tuple(KINDS))  # its keys depend on the kind
    config = KINDS[kind].parse(name, t, base_dir)
    t.finish()
    return config


def _model(name: str, t: Table, adapters: Mapping[str, BackendConfig]) -> ModelConfig:
    t.expect(keys_of(ModelConfig, without=("name",)))
    adapter = t.text("adapter")
    if adapter not in adapters:
        raise t.error("adapter", f"no adapter named {adapter!r} (have: "
                      f"{', '.join(adapters) or 'none'})")
    policy = t.text("version_policy", "latest", choices=("latest", "all", "specific"))
    versions = t.integers("versions")
    if policy == "specific" and not versions:
        raise t.error("versions", "version_policy 'specific' needs a non-empty list of versions")
    labels_table = t.table("labels")
    labels: dict[str, Any] = {}
    for label in list(labels_table.data):
        labels[label] = labels_table.integer(label, minimum=1)
    labels_table.finish()
    batching = None
    if "batching" in t:
        backend = adapters[adapter]
        # a backend the gateway batches for has a batching default; the others batch themselves
        base = getattr(backend, "batching", None)
        if not isinstance(base, BatchingConfig):
            raise t.error("batching", f"adapter {adapter!r} ({backend.kind}) batches itself; "
                          "batching applies to onnx adapters")
        batching = parse_batching(t.table("batching"), base)
    config = ModelConfig(
        name=name,
        adapter=adapter,
        version_policy=policy,
        latest=t.integer("latest", 1, minimum=1),
        versions=versions,
        labels=MappingProxyType(labels),
        batching=batching,
    )
    t.finish()
    return config
