"""How the gateway talks to a remote backend's endpoints, the same for every remote kind
(TF Serving, TorchServe, v2): the keys sit flat in the backend's `[adapters.NAME]` table next
to the kind's own, and one parser reads them for all kinds. The outlier-ejection and health
check defaults are Envoy's (docs/configuration.md)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from gateway.tomlconfig import Table, keys_of


@dataclass(frozen=True)
class BackendTls:
    """TLS to the backend: the CA its certificates are checked against (the system's when
    None), a client certificate for mTLS, and the name to check when it is not the host's."""

    ca_file: Path | None = None
    cert_file: Path | None = None  # PEM; with key_file: mTLS
    key_file: Path | None = None
    server_name: str | None = None


@dataclass(frozen=True)
class PoolConfig:
    max_message_bytes: int = 64 * 1024 * 1024
    keepalive_time_s: float = 30.0
    connect_timeout_s: float = 5.0
    # outlier ejection: what the gateway sees of real requests takes an endpoint out
    consecutive_failures: int = 5  # 0: off
    failure_rate: float = 0.85  # share of failed requests in a window; 0: off
    failure_rate_window_s: float = 10.0
    failure_rate_min_requests: int = 50  # fewer in a window: the rate is not judged
    base_ejection_time_s: float = 30.0  # times the number of ejections so far
    max_ejection_time_s: float = 300.0
    max_ejection_percent: int = 10  # one endpoint may always be ejected, one always stays
    # active health checks: the gateway's own probe takes an endpoint out and brings it back
    health_check_interval_s: float = 5.0  # 0: off
    health_check_timeout_s: float = 1.0
    healthy_threshold: int = 2  # passed probes in a row to come back
    unhealthy_threshold: int = 3  # failed probes in a row to go out
    tls: BackendTls | None = None  # None: plaintext


TLS_KEYS = ("tls", "tls_ca_file", "tls_cert_file", "tls_key_file", "tls_server_name")
POOL_KEYS = (*keys_of(PoolConfig, without=("tls",)), *TLS_KEYS)


def parse_pool(t: Table) -> PoolConfig:
    d = PoolConfig()
    return PoolConfig(
        max_message_bytes=t.integer("max_message_bytes", d.max_message_bytes, minimum=1024),
        keepalive_time_s=t.number("keepalive_time_s", d.keepalive_time_s, minimum=1),
        connect_timeout_s=t.number("connect_timeout_s", d.connect_timeout_s, minimum=0.01),
        consecutive_failures=t.integer("consecutive_failures", d.consecutive_failures,
                                       minimum=0),
        failure_rate=_fraction(t, "failure_rate", d.failure_rate),
        failure_rate_window_s=t.number("failure_rate_window_s", d.failure_rate_window_s,
                                       minimum=0.1),
        failure_rate_min_requests=t.integer("failure_rate_min_requests",
                                            d.failure_rate_min_requests, minimum=1),
        base_ejection_time_s=t.number("base_ejection_time_s", d.base_ejection_time_s,
                                      minimum=0.01),
        max_ejection_time_s=t.number("max_ejection_time_s", d.max_ejection_time_s,
                                     minimum=0.01),
        max_ejection_percent=t.integer("max_ejection_percent", d.max_ejection_percent,
                                       minimum=0, maximum=100),
        health_check_interval_s=_interval(t, d.health_check_interval_s),
        health_check_timeout_s=t.number("health_check_timeout_s", d.health_check_timeout_s,
                                        minimum=0.01),
        healthy_threshold=t.integer("healthy_threshold", d.healthy_threshold, minimum=1),
        unhealthy_threshold=t.integer("unhealthy_threshold", d.unhealthy_threshold, minimum=1),
        tls=_parse_tls(t),
    )


def _fraction(t: Table, key: str, default: float) -> float:
    value = t.number(key, default, minimum=0)
    if value > 1:
        raise t.error(key, f"expected a share between 0 and 1, got {value}")
    return value


def _interval(t: Table, default: float) -> float:
    value = t.number("health_check_interval_s", default, minimum=0)
    if 0 < value < 0.01:
        raise t.error("health_check_interval_s", f"expected 0 (off) or >= 0.01, got {value}")
    return value


def _parse_tls(t: Table) -> BackendTls | None:
    """Checked now by building a context: a missing file, a key that does not match its
    certificate or a CA file that is not PEM fails `gateway check-config`."""
    on = t.flag("tls", False)
    base = t.source.path.parent
    files = {key: _path(t, key, base) for key in ("tls_ca_file", "tls_cert_file",
                                                  "tls_key_file")}
    server_name = t.text("tls_server_name", "") or None
    given = [key for key, path in files.items() if path is not None]
    if server_name is not None:
        given.append("tls_server_name")
    if not on:
        if given:
            raise t.error(given[0], "needs tls = true")
        return None
    if (files["tls_cert_file"] is None) != (files["tls_key_file"] is None):
        key = "tls_key_file" if files["tls_key_file"] is None else "tls_cert_file"
        raise t.error(key, "a client certificate needs both tls_cert_file and tls_key_file")
    tls = BackendTls(files["tls_ca_file"], files["tls_cert_file"], files["tls_key_file"],
                     server_name)
    try:
        context = _verifying_context(tls)
    except (OSError, ssl.SSLError) as exc:
        raise t.error("tls_ca_file", f"not a PEM CA bundle: {exc}") from None
    try:
        _present_certificate(context, tls)
    except (OSError, ssl.SSLError) as exc:
        raise t.error("tls_cert_file", f"with tls_key_file, not a usable client certificate "
                                       f"and key: {exc}") from None
    return tls


def _path(t: Table, key: str, base: Path) -> Path | None:
    text = t.text(key, "")
    if not text:
        return None
    path = Path(text) if Path(text).is_absolute() else base / text
    if not path.is_file():
        raise t.error(key, f"no such file: {path}")
    return path


def client_ssl_context(tls: BackendTls) -> ssl.SSLContext:
    """What an HTTPS client (TorchServe REST) checks the backend with and presents to it."""
    context = _verifying_context(tls)
    _present_certificate(context, tls)
    return context


def _verifying_context(tls: BackendTls) -> ssl.SSLContext:
    return ssl.create_default_context(
        cafile=str(tls.ca_file) if tls.ca_file is not None else None)


def _present_certificate(context: ssl.SSLContext, tls: BackendTls) -> None:
    if tls.cert_file is not None and tls.key_file is not None:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))


def parse_addresses(t: Table, key: str, *, required: bool = True,
                    url: bool = False) -> tuple[str, ...]:
    """`"host:port"` strings (`"http://host:port"` with `url`), none only if not `required`."""
    form = "http://host:port" if url else "host:port"
    addresses = t.texts(key)
    if required and not addresses:
        raise t.error(key, f"expected a non-empty list of \"{form}\" strings")
    for address in addresses:
        scheme, _, rest = address.rpartition("://") if url else ("http", "", address)
        host, _, port = rest.rstrip("/").rpartition(":")
        if scheme not in ("http", "https") or not host or not port.isdigit():
            raise t.error(key, f"expected \"{form}\", got {address!r}")
    return tuple(a.rstrip("/") for a in addresses)
