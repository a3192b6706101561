"""`rediss://` to a real `redis-server` listening on TLS only and asking clients for a
certificate (`--tls-auth-clients yes`): the `[redis] tls_*` keys checked at load, and a
gateway under mTLS whose limit, kept in that Redis, counts each client certificate's subject
in its own bucket, and whose policy is shared through it."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from gateway.config import ConfigError, load_config
from tests.redis_server import REDIS_SERVER, free_port
from tests.servers.gateway_process import gateway_process
from tests.test_tls import INFER, curl, wait_ready, write_gateway_toml
from tests.tls_support import Certificates, ClientCertificate


@dataclass
class TlsRedis:
    port: int
    certs: Certificates  # its CA signs the server's certificate and the gateway's client one
    client_cert: ClientCertificate

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, ssl_ca_certs=str(self.certs.ca_file),
                                    ssl_certfile=str(self.client_cert.pem),
                                    ssl_keyfile=str(self.client_cert.pem), socket_timeout=1)

    def redis_table(self, **extra: object) -> str:
        lines = [f'url = "{self.url}"', f'tls_ca_file = "{self.certs.ca_file}"',
                 f'tls_cert_file = "{self.client_cert.pem}"',
                 f'tls_key_file = "{self.client_cert.pem}"',
                 *(f"{key} = {value}" for key, value in extra.items())]
        return "[redis]\n" + "\n".join(lines) + "\n"


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[TlsRedis]:
    directory = tmp_path / "redis"
    directory.mkdir()
    certs = Certificates(directory)
    server = TlsRedis(free_port(), certs, certs.client("gateway"))
    process = subprocess.Popen(
        [REDIS_SERVER, "--port", "0", "--tls-port", str(server.port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(certs.cert_file), "--tls-key-file", str(certs.key_file),
         "--tls-ca-cert-file", str(certs.ca_file), "--tls-auth-clients", "yes",
         "--save", "", "--appendonly", "no"],
        cwd=directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = server.client()
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert process.poll() is None, "redis-server exited (built without TLS?)"
            assert time.monotonic() < deadline, "redis-server did not answer over TLS"
            time.sleep(0.02)
    client.close()
    try:
        yield server
    finally:
        process.kill()
        process.wait()


def test_redis_tls_keys_name_their_files(tmp_path: Path) -> None:
    certs = Certificates(tmp_path)
    client = certs.client("gateway")
    path = write_gateway_toml(tmp_path, tls=(
        '[redis]\nurl = "rediss://redis.internal:6380/0"\ntls_ca_file = "ca.pem"\n'
        f'tls_cert_file = "{client.pem.name}"\ntls_key_file = "{client.pem.name}"\n'))
    config = load_config(path)
    assert config.redis is not None
    assert config.redis.tls.options() == {
        "ssl_ca_certs": str(certs.ca_file), "ssl_certfile": str(client.pem),
        "ssl_keyfile": str(client.pem)}


@pytest.mark.parametrize(("table", "message"), [
    ('url = "redis://127.0.0.1:6379/0"\ntls_ca_file = "ca.pem"',
     r"redis.tls_ca_file: applies only to a rediss:// URL"),
    ('url = "rediss://127.0.0.1:6379/0"\ntls_cert_file = "gateway.pem"',
     r"redis.tls_key_file: missing; the client certificate and its key come together"),
    ('url = "rediss://127.0.0.1:6379/0"\ntls_ca_file = "nope.pem"',
     r"redis.tls_ca_file: .*nope.pem: not a readable PEM CA bundle"),
    ('url = "rediss://127.0.0.1:6379/0"\ntls_cert_file = "gateway.pem"\n'
     'tls_key_file = "server.key"', r"redis.tls_key_file: .*not a readable PEM certificate"),
])
def test_bad_redis_tls_keys_are_refused_at_load(tmp_path: Path, table: str,
                                                message: str) -> None:
    Certificates(tmp_path).client("gateway")
    path = write_gateway_toml(tmp_path, tls=f"[redis]\n{table}\n")
    with pytest.raises(ConfigError, match=rf"gateway.toml:\d+: {message}"):
        load_config(path)


def test_redis_refuses_a_client_without_the_certificate(tls_redis: TlsRedis) -> None:
    """What makes the next test meaningful: this Redis admits only a signed client."""
    bare = redis.Redis.from_url(tls_redis.url, ssl_ca_certs=str(tls_redis.certs.ca_file),
                                socket_timeout=2)
    with pytest.raises(redis.ConnectionError):
        bare.ping()
    bare.close()


def test_limits_over_rediss_count_each_client_certificate_apart(
        tls_redis: TlsRedis, tmp_path: Path) -> None:
    certs = Certificates(tmp_path)  # the gateway's own CA, for its listeners and clients
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "limits.toml").write_text(
        '[[limits]]\nname = "per-client"\nmodels = ["demo"]\nkey = "sub"\nrate = 1\n'
        'period_s = 60\nburst = 1\non_redis_error = "closed"\n')
    config = write_gateway_toml(tmp_path, tls=(
        certs.server_table(mutual=True)
        # a TLS handshake per new connection: more than the default 50 ms on a busy machine
        + tls_redis.redis_table(timeout_ms=2000, lease_max_share=0)
        + '[policies]\ndirectory = "policies"\n'))
    alice, bob = certs.client("alice"), certs.client("bob")
    with gateway_process(config, tmp_path / "gateway.log") as gateway:
        wait_ready(gateway, certs, alice)

        def status(client: ClientCertificate) -> str:
            reply = curl(gateway.http_port, certs, "/v2/models/demo/infer", data=INFER,
                         client=client)
            return reply.stdout.rsplit("\n", 1)[-1]

        assert status(alice) == "200"  # "closed": 503 had Redis not answered over TLS
        assert status(alice) == "429"
        assert status(bob) == "200"  # another certificate, another bucket
        assert status(bob) == "429"
    client = tls_redis.client()
    assert client.hget("{gateway:policy}:active", "version") == b"1"  # the policy sync's too
    client.close()
