"""`[redis]` `tls_*` keys: for a `rediss://` URL, the CA the server's certificate must chain to
(else the system's CAs) and the client certificate Redis asks for with `tls-auth-clients`. The
files are checked at load: a typo fails `gateway check-config`, not every limit check."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from gateway.tls.config import file_path
from gateway.tomlconfig import Table

TLS_KEYS = ("tls_ca_file", "tls_cert_file", "tls_key_file")


@dataclass(frozen=True)
class RedisTls:
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def options(self) -> dict[str, str]:
        """redis-py's connection keywords for these files."""
        files = {"ssl_ca_certs": self.ca_file, "ssl_certfile": self.cert_file,
                 "ssl_keyfile": self.key_file}
        return {keyword: str(path) for keyword, path in files.items() if path is not None}


def parse_redis_tls(t: Table, url: str) -> RedisTls:
    """The `tls_*` keys of `[redis]` (declared by its parser), checked against `url`."""
    files = {key: file_path(t, key) for key in TLS_KEYS if key in t}
    if files and not url.startswith("rediss://"):
        raise t.error(next(iter(files)), "applies only to a rediss:// URL (TLS)")
    if ("tls_cert_file" in files) != ("tls_key_file" in files):
        missing = "tls_key_file" if "tls_cert_file" in files else "tls_cert_file"
        raise t.error(missing, "missing; the client certificate and its key come together")
    tls = RedisTls(files.get("tls_ca_file"), files.get("tls_cert_file"),
                   files.get("tls_key_file"))
    context = ssl.create_default_context()
    try:
        if tls.ca_file is not None:
            context.load_verify_locations(cafile=tls.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise t.error("tls_ca_file", f"{tls.ca_file}: not a readable PEM CA bundle "
                      f"({exc})") from None
    try:
        if tls.cert_file is not None:
            context.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise t.error("tls_key_file", f"{tls.cert_file} and {tls.key_file}: not a readable "
                      f"PEM certificate and its unencrypted key ({exc})") from None
    return tls
