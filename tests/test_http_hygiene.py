"""The HTTP listener as `gateway serve` runs it (gateway.rest.connections): connection cap,
header and keep-alive timeouts, request line and header limits as JSON that never echo the
client's bytes, authentication and shedding before a body is read, body limits counted after
decompression. Raw sockets, so nothing a client library would fix up hides a problem."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.config import load_config
from gateway.rest.connections import start_http
from tests.auth_support import bearer, claims, hs_provider, sign
from tests.conftest import WriteConfig
from tests.waiting import models_loaded, wait_until

AUTH = f"""
[auth]
enabled = true
{hs_provider()}
"""
V2_BODY = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                  "data": [1, 2, 3, 4]}]}).encode()


@dataclass
class Listener:
    gateway: Gateway
    port: int

    def refused(self, reason: str) -> float:
        value = self.gateway.metrics.registry.get_sample_value(
            "gateway_connections_refused_total", {"reason": reason})
        return value or 0.0

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def exchange(self, data: bytes) -> tuple[int, dict[str, str], bytes]:
        reader, writer = await self.connect()
        writer.write(data)
        try:
            return await read_response(reader)
        finally:
            writer.close()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", 0))), 10)
    return int(status_line.split()[1]), headers, body


def post(path: str, body: bytes, *extra: str) -> bytes:
    head = [f"POST {path} HTTP/1.1", "Host: gw", f"Content-Length: {len(body)}",
            "Content-Type: application/json", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@pytest.fixture
async def listen(write_config: WriteConfig) -> AsyncIterator[Callable[..., Any]]:
    started: list[tuple[Any, Gateway]] = []

    async def start(extra: str = "", server: str = "") -> Listener:
        config = load_config(write_config(extra, server=server))
        gateway = Gateway(config)
        runner, site = await start_http(
            gateway.http_app(), config.server,
            lambda reason: gateway.metrics.connections_refused.labels(reason).inc())
        started.append((runner, gateway))
        await models_loaded(gateway)
        return Listener(gateway, site.addresses()[0][1])

    yield start
    for runner, _ in started:
        await runner.cleanup()


async def test_a_request_line_over_the_limit_is_414_json_without_echo(listen: Any) -> None:
    listener = await listen(server="max_request_line_bytes = 300")
    status, headers, body = await listener.exchange(
        b"GET /v2/models/" + b"SECRETPATH" * 40 + b" HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert status == 414 and headers["content-type"].startswith("application/json")
    assert b"SECRETPATH" not in body and "max_request_line_bytes" in json.loads(body)["error"]
    assert listener.refused("request_line_too_long") == 1


async def test_a_header_over_the_limit_is_431_json_that_never_echoes_the_token(
        listen: Any) -> None:
    listener = await listen(server="max_header_bytes = 512")
    token = "eyJTOKEN" + "A" * 9000
    status, headers, body = await listener.exchange(
        f"GET /healthz HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
    assert status == 431 and headers["content-type"].startswith("application/json")
    assert b"eyJTOKEN" not in body and b"AAAA" not in body
    assert "max_header_bytes" in json.loads(body)["error"]


async def test_too_many_headers_is_431(listen: Any) -> None:
    listener = await listen(server="max_headers = 10")
    fields = "".join(f"X-F{i}: 1\r\n" for i in range(20))
    status, _, body = await listener.exchange(
        f"GET /healthz HTTP/1.1\r\nHost: gw\r\n{fields}\r\n".encode())
    assert status == 431 and "max_headers" in json.loads(body)["error"]


async def test_garbage_is_a_json_400_without_echo(listen: Any) -> None:
    listener = await listen()
    status, _, body = await listener.exchange(b"\x16\x03\x01GARBAGE-BYTES\r\n\r\n")
    assert status == 400 and b"GARBAGE" not in body
    assert json.loads(body) == {"error": "malformed HTTP request"}


async def test_the_server_header_names_no_software_versions(listen: Any) -> None:
    """aiohttp's default `Server: Python/3.11 aiohttp/3.14.5` is replaced everywhere: replies,
    errors, and refusals made below the application."""
    listener = await listen(server="max_headers = 10")
    fields = "".join(f"X-F{i}: 1\r\n" for i in range(20))
    for request in (b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n",
                    b"GET /nowhere HTTP/1.1\r\nHost: gw\r\n\r\n",
                    post("/v2/models/demo/infer", V2_BODY),
                    b"\x16\x03\x01GARBAGE-BYTES\r\n\r\n",
                    f"GET /healthz HTTP/1.1\r\nHost: gw\r\n{fields}\r\n".encode()):
        status, headers, _ = await listener.exchange(request)
        assert headers["server"] == "inference-gateway", (status, request[:20])


async def test_half_sent_headers_are_cut_off_at_the_header_timeout(listen: Any) -> None:
    listener = await listen(server="header_timeout_s = 0.3")
    reader, writer = await listener.connect()
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Slow: ")
    started = time.monotonic()
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the server
    assert time.monotonic() - started >= 0.25
    assert listener.refused("header_timeout") == 1
    writer.close()


async def test_the_header_timeout_also_covers_the_next_request_on_a_kept_alive_connection(
        listen: Any) -> None:
    listener = await listen(server="header_timeout_s = 0.3\nkeepalive_timeout_s = 30")
    reader, writer = await listener.connect()
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
    status, _, _ = await read_response(reader)
    assert status == 200
    writer.write(b"GET /healthz HTTP/1.1\r\nHo")
    assert await asyncio.wait_for(reader.read(), 10) == b""
    assert listener.refused("header_timeout") == 1
    writer.close()


async def test_an_idle_keep_alive_connection_is_closed(listen: Any) -> None:
    listener = await listen(server="keepalive_timeout_s = 0.2")
    reader, writer = await listener.connect()
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert (await read_response(reader))[0] == 200
    assert await asyncio.wait_for(reader.read(), 10) == b""
    assert listener.refused("header_timeout") == 0  # idle is not a slow request
    writer.close()


async def test_connections_over_the_cap_are_closed_and_the_others_still_served(
        listen: Any) -> None:
    listener = await listen(server="max_connections = 3")
    held = [await listener.connect() for _ in range(3)]
    await wait_until(lambda: listener.gateway.metrics.registry.get_sample_value(
        "gateway_http_connections") in (None, 3))
    reader, writer = await listener.connect()
    assert await asyncio.wait_for(reader.read(), 10) == b""
    await wait_until(lambda: listener.refused("connection_limit") == 1)
    first_reader, first_writer = held[0]
    first_writer.write(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert (await read_response(first_reader))[0] == 200
    for _, w in (*held, (reader, writer)):
        w.close()


async def test_without_a_token_the_body_is_never_read(listen: Any) -> None:
    """Headers promise a 16 MiB chunked body that never comes: the 401 cannot wait for it."""
    listener = await listen(AUTH)
    reader, writer = await listener.connect()
    writer.write(b"POST /v2/models/demo/infer HTTP/1.1\r\nHost: gw\r\n"
                 b"Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n"
                 b"100000\r\n" + b" " * 4096)
    status, headers, body = await read_response(reader)
    assert status == 401 and "error" in json.loads(body)
    assert headers.get("connection", "").lower() == "close"  # the unread body is not drained
    writer.close()


async def test_an_upload_without_the_manage_scope_is_refused_before_its_bytes(
        listen: Any) -> None:
    listener = await listen(AUTH)
    token = bearer(sign(claims(time.time(), scope="predict")))["Authorization"]
    reader, writer = await listener.connect()
    writer.write(f"POST /models?name=x HTTP/1.1\r\nHost: gw\r\nAuthorization: {token}\r\n"
                 "Content-Length: 500000000\r\n\r\n".encode())
    status, _, body = await read_response(reader)
    assert status == 403, body
    writer.close()


async def test_a_gzip_bomb_stops_at_the_body_limit_after_decompression(listen: Any) -> None:
    listener = await listen(server="max_body_bytes = 1048576")
    bomb = gzip.compress(b" " * (256 * 1024 * 1024), compresslevel=9)  # ~250 KB on the wire
    assert len(bomb) < 1024 * 1024
    status, _, body = await listener.exchange(post("/v2/models/demo/infer", bomb,
                                                   "Content-Encoding: gzip"))
    assert status == 413
    message = json.loads(body)["error"]
    assert "max_body_bytes" in message and "decompression" in message


async def test_a_broken_gzip_body_is_400(listen: Any) -> None:
    listener = await listen()
    status, _, body = await listener.exchange(post("/v2/models/demo/infer", b"not gzip at all",
                                                   "Content-Encoding: gzip"))
    assert status == 400 and "error" in json.loads(body)


async def test_a_model_at_its_in_flight_limit_sheds_before_reading_the_body(
        listen: Any) -> None:
    listener = await listen(server="max_inflight_per_model = 1")
    reader, writer = await listener.connect()  # holds demo's one slot: half its body sent
    writer.write(post("/v2/models/demo/infer", V2_BODY)[:-10])
    await wait_until(lambda: listener.gateway.inflight.in_flight == 1)
    status, headers, body = await listener.exchange(post("/v2/models/demo/infer", V2_BODY))
    assert status == 503 and headers["retry-after"] == "1"
    assert "max_inflight_per_model" in json.loads(body)["error"]
    other, _, _ = await listener.exchange(post("/v2/models/multi/infer", b"{}"))
    assert other == 400  # another model still has its slots
    writer.write(V2_BODY[-10:])
    assert (await read_response(reader))[0] == 200
    await wait_until(lambda: listener.gateway.inflight.in_flight == 0)
    writer.close()


@pytest.mark.parametrize("value", ["-5", "0", "nan", "soon"])
async def test_a_timeout_header_that_is_not_a_positive_number_is_400(listen: Any,
                                                                      value: str) -> None:
    listener = await listen()
    status, _, body = await listener.exchange(post("/v2/models/demo/infer", V2_BODY,
                                                   f"X-Request-Timeout-Ms: {value}"))
    assert status == 400 and "X-Request-Timeout-Ms" in json.loads(body)["error"]
    assert listener.gateway.inflight.in_flight == 0


async def test_a_multipart_upload_with_a_bad_boundary_is_400(listen: Any) -> None:
    listener = await listen()
    body = b"--wrong\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nxx\r\n--wrong--\r\n"
    status, _, reply = await listener.exchange(
        b"POST /models?name=m HTTP/1.1\r\nHost: gw\r\nContent-Type: multipart/form-data; "
        b"boundary=right\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    assert status == 400 and "error" in json.loads(reply)


@pytest.mark.parametrize(("encoding", "compress"), [
    ("gzip", gzip.compress), ("deflate", zlib.compress)])
async def test_a_compressed_body_is_inflated_and_served(listen: Any, encoding: str,
                                                        compress: Callable[[bytes], bytes]
                                                        ) -> None:
    listener = await listen()
    status, _, body = await listener.exchange(post("/v2/models/demo/infer", compress(V2_BODY),
                                                   f"Content-Encoding: {encoding}"))
    assert status == 200, body


async def test_an_encoding_the_gateway_does_not_inflate_is_415(listen: Any) -> None:
    listener = await listen()
    status, _, body = await listener.exchange(post("/v2/models/demo/infer", b"\x00" * 10,
                                                   "Content-Encoding: br"))
    assert status == 415 and "Content-Encoding" in json.loads(body)["error"]


async def test_a_truncated_gzip_body_is_400(listen: Any) -> None:
    listener = await listen()
    status, _, body = await listener.exchange(post("/v2/models/demo/infer",
                                                   gzip.compress(V2_BODY)[:-12],
                                                   "Content-Encoding: gzip"))
    assert status == 400 and "gzip" in json.loads(body)["error"]
