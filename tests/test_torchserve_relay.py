"""What crosses the gateway between a TorchServe client and its handler, without a TorchServe:
the headers each way (adapters/torchserve/headers.py, its deny list) and a form or multipart
body split into named inputs for TorchServe's gRPC API (adapters/torchserve/fields.py)."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from adapters.torchserve import fields, headers
from gateway.errors import BadRequest


def test_the_handler_gets_the_clients_headers_but_the_deny_list() -> None:
    sent = CIMultiDict([
        ("Accept", "*/*"), ("X-Session", "s-1"), ("X-Tag", "a"), ("X-Tag", "b"),
        ("Connection", "keep-alive, X-Hop"), ("X-Hop", "1"), ("Keep-Alive", "timeout=5"),
        ("Host", "gateway:8080"), ("Authorization", "Bearer gateway-token"),
        ("Content-Length", "3"), ("Content-Encoding", "gzip"), ("Content-Type", "text/plain"),
        ("Transfer-Encoding", "chunked"), ("Expect", "100-continue"), ("TE", "trailers")])
    assert list(headers.to_handler(sent).items()) == [
        ("Accept", "*/*"), ("X-Session", "s-1"), ("X-Tag", "a"), ("X-Tag", "b")]


def test_the_client_gets_the_handlers_headers_but_the_deny_list() -> None:
    answered = CIMultiDict([
        ("X-Verdict", "rejected"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"),
        ("Pragma", "no-cache"), ("x-request-id", "torchserve-own"), ("connection", "close"),
        ("content-length", "12"), ("Content-Type", "text/x-report"), ("Date", "today"),
        ("Server", "netty"), ("Content-Encoding", "gzip")])
    assert list(headers.to_client(answered).items()) == [
        ("X-Verdict", "rejected"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"),
        ("Pragma", "no-cache"), ("Content-Encoding", "gzip")]


def test_a_form_is_its_fields() -> None:
    assert fields.inputs(b"a=1+2&b=%C3%A9", "application/x-www-form-urlencoded") == {
        "a": b"1 2", "b": "é".encode()}


def test_a_multipart_body_is_its_parts() -> None:
    body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"text\"\r\n\r\nhello\r\n"
            b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"k.bin\"\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n\x00\x01\xff\r\n--XyZ--\r\n")
    assert fields.inputs(body, "multipart/form-data; boundary=XyZ") == {
        "text": b"hello", "file": b"\x00\x01\xff"}


@pytest.mark.parametrize("content_type", ["application/json", "", "image/png"])
def test_any_other_body_is_the_one_input_rest_names_body(content_type: str) -> None:
    assert fields.inputs(b'{"a": 1}', content_type) == {"body": b'{"a": 1}'}


def test_a_multipart_body_without_its_boundary_is_400() -> None:
    with pytest.raises(BadRequest, match="multipart"):
        fields.inputs(b"no parts here", "multipart/form-data")
