"""`[tracing]` in gateway.toml, overridden by the standard OTEL_* environment variables (the
environment wins, as in every OpenTelemetry SDK). Resolved once, at load: the result is what
the gateway will do, and `gateway check-config` reports a bad variable like a bad key."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.tomlconfig import ConfigError, Table

EXPORTERS = ("otlp", "console", "none")
PROTOCOLS = ("grpc", "http/protobuf")
DETAILS = ("request", "steps")
SAMPLERS = ("always_on", "always_off", "traceidratio", "parentbased_always_on",
            "parentbased_always_off", "parentbased_traceidratio")
_DEFAULT_ENDPOINTS = {"grpc": "http://localhost:4317", "http/protobuf": "http://localhost:4318"}


@dataclass(frozen=True)
class TracingConfig:
    exporters: tuple[str, ...] = ()  # "otlp", "console"; none: tracing is off
    protocol: str = "grpc"  # of the OTLP exporter
    endpoint: str = _DEFAULT_ENDPOINTS["grpc"]  # OTLP: as the exporter takes it (HTTP: full URL)
    service_name: str = "inference-gateway"
    sampler: str = "parentbased_always_on"
    sampler_arg: float = 1.0  # the ratio of the *traceidratio samplers
    detail: str = "request"  # "request": server and backend client spans; "steps": every step
    keep_errors: bool = True  # a request with an error span is exported whatever the sampler says
    slow_ms: float = 0.0  # so is one that took at least this long; 0: none for being slow

    @property
    def enabled(self) -> bool:
        return bool(self.exporters)


def parse_tracing_config(t: Table, environ: Mapping[str, str] = os.environ) -> TracingConfig:
    t.expect(("exporter", "protocol", "endpoint", "service_name", "sampler", "sampler_arg",
              "detail", "keep_errors", "slow_ms"))
    d = TracingConfig()
    exporter = t.text("exporter", "none", choices=EXPORTERS)
    protocol = t.text("protocol", d.protocol, choices=PROTOCOLS)
    endpoint = t.text("endpoint", "")
    service_name = t.text("service_name", d.service_name)
    sampler = t.text("sampler", d.sampler, choices=SAMPLERS)
    sampler_arg = t.number("sampler_arg", d.sampler_arg, minimum=0)
    if sampler_arg > 1:
        raise t.error("sampler_arg", f"expected a ratio between 0 and 1, got {sampler_arg}")
    detail = t.text("detail", d.detail, choices=DETAILS)
    keep_errors = t.flag("keep_errors", d.keep_errors)
    slow_ms = t.number("slow_ms", d.slow_ms, minimum=0)
    t.finish()

    env = _Environment(environ)
    if env.flag("OTEL_SDK_DISABLED"):
        return TracingConfig()
    exporters = tuple(e for e in env.names("OTEL_TRACES_EXPORTER", EXPORTERS, [exporter])
                      if e != "none")
    protocol = env.choice("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", PROTOCOLS,
                          env.choice("OTEL_EXPORTER_OTLP_PROTOCOL", PROTOCOLS, protocol))
    return TracingConfig(
        exporters=exporters,
        protocol=protocol,
        endpoint=_endpoint(environ, protocol, endpoint),
        service_name=environ.get("OTEL_SERVICE_NAME") or service_name,
        sampler=env.choice("OTEL_TRACES_SAMPLER", SAMPLERS, sampler),
        sampler_arg=env.ratio("OTEL_TRACES_SAMPLER_ARG", sampler_arg),
        detail=detail, keep_errors=keep_errors, slow_ms=slow_ms,
    )


def _endpoint(environ: Mapping[str, str], protocol: str, configured: str) -> str:
    """The signal's own variable is the URL as is; the general one (and `endpoint` in the
    file, which means the same) is a base to which OTLP/HTTP adds `/v1/traces`."""
    own = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if own:
        return own
    base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or configured or _DEFAULT_ENDPOINTS[protocol]
    return f"{base.rstrip('/')}/v1/traces" if protocol == "http/protobuf" else base


class _Environment:
    """Reads OTEL_* variables; a bad value is a `ConfigError` naming the variable."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def _get(self, name: str) -> str | None:
        value = self._environ.get(name, "").strip()
        return value or None

    def _error(self, name: str, expected: str, value: str) -> ConfigError:
        return ConfigError(f"environment variable {name}: expected {expected}, got {value!r}")

    def flag(self, name: str) -> bool:
        value = self._get(name)
        return value is not None and value.lower() == "true"

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = self._get(name)
        if value is None:
            return default
        if value not in choices:
            raise self._error(name, "one of " + ", ".join(choices), value)
        return value

    def names(self, name: str, choices: tuple[str, ...], default: list[str]) -> list[str]:
        """A comma-separated list, as OTEL_TRACES_EXPORTER allows."""
        value = self._get(name)
        if value is None:
            return default
        names = [part.strip() for part in value.split(",") if part.strip()]
        if not names or any(n not in choices for n in names):
            raise self._error(name, "a comma-separated list of " + ", ".join(choices), value)
        return names

    def ratio(self, name: str, default: float) -> float:
        value = self._get(name)
        if value is None:
            return default
        try:
            ratio = float(value)
        except ValueError:
            ratio = -1.0
        if not 0 <= ratio <= 1:
            raise self._error(name, "a ratio between 0 and 1", value)
        return ratio
