"""What a limit counts requests by: a claim, a header, the client's address (the peer's, or
behind trusted proxies the right-most untrusted `X-Forwarded-For` hop), the mTLS subject (a
real mTLS gateway). Keys stay bounded and unforgeable; the doors set the address and subject,
REST and gRPC alike."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from redis.asyncio import Redis

from gateway.client_address import TrustedProxies
from gateway.config import ConfigError, load_config
from gateway.policy.loader import compile_policy
from gateway.ratelimit.keys import bucket_key
from gateway.ratelimit.rules import MAX_KEY_VALUE, LimitKey, LimitRule
from gateway.types import Principal, RequestContext
from tests.redis_server import redis_server  # noqa: F401 (a fixture)
from tests.servers.gateway_process import gateway_process
from tests.servers.running_gateway import StartGateway
from tests.test_grpc_frontend import infer_request
from tests.test_ratelimit_memory import BODY, policies
from tests.test_tls import INFER, curl, grpc_infer, secure_channel, wait_ready, write_gateway_toml
from tests.tls_support import Certificates

pytest_plugins = ["tests.servers.fixtures"]

PROXIES = TrustedProxies.parse(["10.0.0.0/8", "192.168.1.1", "fd00::/8"])


def headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def xff(*values: str) -> CIMultiDictProxy[str]:
    return headers(*(("X-Forwarded-For", value) for value in values))


@pytest.mark.parametrize(("peer", "fields", "client"), [
    ("203.0.113.9", ("198.51.100.1",), "203.0.113.9"),  # an untrusted peer's header is its own
    ("10.1.2.3", (), "10.1.2.3"),  # a proxy that sent no header is the client
    ("10.1.2.3", ("198.51.100.1",), "198.51.100.1"),
    ("10.1.2.3", ("198.51.100.1, 10.9.9.9",), "198.51.100.1"),  # through two proxies
    # What the client wrote itself is left of the hop its first proxy added: never reached.
    ("10.1.2.3", ("6.6.6.6, 198.51.100.1",), "198.51.100.1"),
    ("10.1.2.3", ("6.6.6.6", "198.51.100.1, 192.168.1.1"), "198.51.100.1"),  # fields join
    ("10.1.2.3", ("10.7.7.7, 10.8.8.8",), "10.7.7.7"),  # all trusted: the left-most
    ("10.1.2.3", ("unknown",), "unknown"),  # not an address: not trusted, so the client
    ("::ffff:10.1.2.3", ("198.51.100.1",), "198.51.100.1"),  # an IPv4 proxy seen over IPv6
    ("fd00::1", (" 2001:db8::7 ",), "2001:db8::7"),
])
def test_the_client_is_the_right_most_untrusted_hop(peer: str, fields: tuple[str, ...],
                                                    client: str) -> None:
    assert PROXIES.client(peer, xff(*fields)) == client


def test_with_no_trusted_proxies_the_header_is_ignored() -> None:
    assert TrustedProxies().client("10.1.2.3", xff("198.51.100.1")) == "10.1.2.3"


def test_trusted_proxies_are_checked_at_load(write_config: Callable[..., Path]) -> None:
    config = load_config(write_config(server='trusted_proxies = ["10.0.0.0/8", "::1"]'))
    assert config.server.trusted_proxies.trusts("10.2.3.4")
    assert config.server.trusted_proxies.trusts("::1")
    assert not config.server.trusted_proxies.trusts("11.0.0.1")
    with pytest.raises(ConfigError, match=r"trusted_proxies.*'10\.0\.0\.0/33' is not an IP"):
        load_config(write_config(server='trusted_proxies = ["10.0.0.0/33"]'))


def context(**fields: object) -> RequestContext:
    fields.setdefault("headers", headers())
    return RequestContext(frontend="test", deadline=0.0, **fields)  # type: ignore[arg-type]


def test_keys_read_their_source() -> None:
    call = context(principal=Principal("alice", {"tenant": "acme", "tier": 2}),
                   headers=headers(("X-Api-Key", "k-1")), client_address="198.51.100.1",
                   tls_subject="CN=svc-a,O=Acme")
    assert LimitKey.parse("sub").value(call) == "alice"
    assert LimitKey.parse("tenant").value(call) == "acme"
    assert LimitKey.parse("claim:tier").value(call) == "2"
    assert LimitKey.parse("https://example.com/org").value(call) == ""  # a claim name
    assert LimitKey.parse("header:x-api-key") == LimitKey("header", "x-api-key")
    assert LimitKey.parse("header:X-API-KEY").value(call) == "k-1"
    assert LimitKey.parse("client_address").value(call) == "198.51.100.1"
    assert LimitKey.parse("tls_subject").value(call) == "CN=svc-a,O=Acme"
    # Absent: one shared bucket, not a free pass.
    bare = context()
    for key in ("header:x-api-key", "tls_subject", "client_address", "tenant"):
        assert LimitKey.parse(key).value(bare) == ""
    for bad in ("header:", "claim:"):
        with pytest.raises(ValueError, match="names no"):
            LimitKey.parse(bad)


def test_long_values_are_bounded_and_stay_distinct() -> None:
    rule = LimitRule("per-key", ("*",), key="header:x-api-key")
    long_a, long_b = "a" * 5000, "a" * 4999 + "b"
    key_a = bucket_key(rule, context(headers=headers(("x-api-key", long_a))), "m")
    key_b = bucket_key(rule, context(headers=headers(("x-api-key", long_b))), "m")
    assert key_a != key_b and len(key_a) < 200 and "=sha256%3A" in key_a
    # Undecodable header bytes (lone surrogates) cannot go to Redis as they are: digested too.
    raw = bucket_key(rule, context(headers=headers(("x-api-key", "k\udcff"))), "m")
    assert "=sha256%3A" in raw and raw.encode("utf-8")
    assert "é" in bucket_key(rule, context(headers=headers(("x-api-key", "é"))), "m")
    exact = "k" * MAX_KEY_VALUE
    assert bucket_key(rule, context(headers=headers(("x-api-key", exact))), "m").endswith(exact)


def test_header_values_cannot_forge_a_key() -> None:
    rule = LimitRule("per-key", ("*",), key="header:x-api-key")
    forged = bucket_key(rule, context(headers=headers(("x-api-key", "x}:{other=1"))), "demo")
    assert forged == "rl:{demo}:per-key:header%3Ax-api-key=x%7D%3A%7Bother%3D1"


def test_the_loader_refuses_a_key_that_names_nothing(tmp_path: Path) -> None:
    text = '[[limits]]\nname = "l"\nmodels = ["*"]\nkey = "header:"\n'
    with pytest.raises(ConfigError, match="names no header"):
        compile_policy((("limits.toml", text),), ())
    policy = compile_policy((("limits.toml", text.replace("header:", "header:X-Api-Key")),), ())
    assert policy.limits[0].by == LimitKey("header", "x-api-key")


PER_CLIENT = """
    [[limits]]
    name = "per-client"
    models = ["demo"]
    key = "client_address"
    rate = 1
    period_s = 3600
    burst = 1
    """


async def infer(gw_http: object, forwarded_for: str | None = None) -> int:
    extra = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    reply = await gw_http.post("/v2/models/demo/infer", json=BODY,  # type: ignore[attr-defined]
                               headers=extra)
    return int(reply.status)


async def test_behind_a_trusted_proxy_each_client_has_its_bucket(
        start_gateway: StartGateway, tmp_path: Path) -> None:
    gw = await start_gateway(policies(tmp_path, PER_CLIENT),
                             server='trusted_proxies = ["127.0.0.1/32"]')
    assert await infer(gw.http, "203.0.113.7") == 200
    assert await infer(gw.http, "203.0.113.7") == 429
    assert await infer(gw.http, "203.0.113.8") == 200
    # A client that writes its own header cannot step into another bucket.
    assert await infer(gw.http, "203.0.113.99, 203.0.113.7") == 429
    # gRPC metadata is read the same way.
    metadata = (("x-forwarded-for", "203.0.113.50"),)
    await gw.v2.ModelInfer(infer_request("demo", [[1.0, 2.0, 3.0, 4.0]]), metadata=metadata)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await gw.v2.ModelInfer(infer_request("demo", [[1.0, 2.0, 3.0, 4.0]]), metadata=metadata)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_without_trusted_proxies_the_peer_is_the_client_on_both_doors(
        start_gateway: StartGateway, tmp_path: Path) -> None:
    gw = await start_gateway(policies(tmp_path, PER_CLIENT))
    # gRPC's peer (ipv4:127.0.0.1:port) and REST's are the same client: one bucket.
    await gw.v2.ModelInfer(infer_request("demo", [[1.0, 2.0, 3.0, 4.0]]))
    assert await infer(gw.http, "203.0.113.7") == 429  # the header changes nothing


async def test_header_keys_count_in_redis_by_their_value(
        start_gateway: StartGateway, tmp_path: Path, redis_server: str) -> None:  # noqa: F811
    gw = await start_gateway(policies(tmp_path, """
        [[limits]]
        name = "per-key"
        models = ["demo"]
        key = "header:X-Api-Key"
        rate = 1
        period_s = 3600
        burst = 1
        """) + textwrap.dedent(f"""
        [redis]
        url = "{redis_server}"
        timeout_ms = 2000
        lease_max_share = 0
        """))
    for key, status in (("k1", 200), ("k1", 429), ("k2", 200)):
        reply = await gw.http.post("/v2/models/demo/infer", json=BODY,
                                   headers={"X-Api-Key": key})
        assert (reply.status, reply.headers.get("RateLimit-Policy")) == (
            status, '"per-key";q=1;w=3600'), await reply.text()
    redis = Redis.from_url(redis_server, decode_responses=True)
    try:
        assert set(await redis.keys("rl:*")) == {"rl:{demo}:per-key:header%3AX-Api-Key=k1",
                                                 "rl:{demo}:per-key:header%3AX-Api-Key=k2"}
    finally:
        await redis.aclose()


def test_under_mtls_each_client_certificate_has_its_bucket(tmp_path: Path) -> None:
    """A real `gateway serve` with mTLS: the verified subject keys the limit, on both doors."""
    certs = Certificates(tmp_path)
    config = write_gateway_toml(tmp_path, tls=certs.server_table(mutual=True))
    config.write_text(config.read_text() + policies(tmp_path, """
        [[limits]]
        name = "per-certificate"
        models = ["demo"]
        key = "tls_subject"
        rate = 1
        period_s = 3600
        burst = 1
        """))
    alpha, beta = certs.client("alpha"), certs.client("beta")
    with gateway_process(config, tmp_path / "gateway.log") as gateway:
        wait_ready(gateway, certs, certs.client("probe"))
        statuses = [curl(gateway.http_port, certs, "/v2/models/demo/infer", data=INFER,
                         client=client).stdout.rsplit("\n", 1)[-1]
                    for client in (alpha, alpha, beta)]
        assert statuses == ["200", "429", "200"]
        with secure_channel(gateway.grpc_port, certs, beta) as channel, \
                pytest.raises(grpc.RpcError) as refused:
            grpc_infer(channel)  # beta's bucket is spent, whichever door it comes through
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
