"""Differential tests: the same request to a real TorchServe (tests.servers.torchserve, its test
handlers) and to the gateway in front of it, over each protocol the gateway may call it with;
status, content type, the headers that matter and the body compared case by case. Over gRPC
the cases assert what that protocol loses (docs/api.md, TorchServe section), nothing more."""

from __future__ import annotations

import asyncio
import gc
import io
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.servers.running_gateway import RunningGateway, StartGateway
from tests.servers.torchserve_server import TorchServe, torchserve_config
from tests.waiting import wait_until

pytest_plugins = ["tests.servers.fixtures", "tests.servers.torchserve"]

MODELS = ("tiny", "failing", "streaming", "echo")
#: Headers TorchServe adds to a handler's reply, which the gateway relays.
RELAYED = ("Pragma", "Cache-Control", "Expires")
#: What the gateway adds for the handler: the request id it answers with (docs/api.md).
GATEWAY_ADDS = ("x-request-id",)


@dataclass
class Answer:
    status: int
    content_type: str | None
    headers: dict[str, str]  # the ones in RELAYED and those a test asks for
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Pair:
    """A request sent to TorchServe itself and to the gateway in front of it."""

    protocol: str
    direct: aiohttp.ClientSession
    gateway: RunningGateway

    async def both(self, method: str, path: str, *, headers: Mapping[str, str] | None = None,
                   relayed: tuple[str, ...] = RELAYED, **kwargs: Any) -> tuple[Answer, Answer]:
        async with self.direct.request(method, path, headers=headers, **kwargs) as direct:
            theirs = await _answer(direct, relayed)
        ours = await _answer(await self.gateway.http.request(method, path, headers=headers,
                                                             **kwargs), relayed)
        return theirs, ours


async def _answer(response: aiohttp.ClientResponse, relayed: tuple[str, ...]) -> Answer:
    return Answer(response.status, response.headers.get("Content-Type"),
                  {h: response.headers[h] for h in relayed if h in response.headers},
                  await response.read())


@pytest.fixture(params=["rest", "grpc"])
async def pair(request: pytest.FixtureRequest, start_gateway: StartGateway,
               torchserve: TorchServe) -> AsyncIterator[Pair]:
    gateway = await start_gateway(torchserve_config(torchserve, protocol=request.param,
                                                    models=MODELS))
    async with aiohttp.ClientSession(torchserve.rest_inference) as direct:
        yield Pair(request.param, direct, gateway)


def seen(answer: Answer) -> tuple[list[Any], dict[str, Any]]:
    """What the echo handler was given: its inputs, and the request headers but what the
    gateway adds."""
    document = answer.json()
    headers = {k: v for k, v in document["headers"].items() if k.lower() not in GATEWAY_ADDS}
    return document["inputs"], headers


def same_inputs(pair: Pair, theirs: Answer, ours: Answer) -> None:
    """The echo handler got the same inputs; over gRPC in any order (a protobuf map, which
    TorchServe hands over in its own order)."""
    if pair.protocol == "rest":
        assert seen(ours)[0] == seen(theirs)[0]
    else:
        assert sorted(seen(ours)[0], key=str) == sorted(seen(theirs)[0], key=str)


def same(pair: Pair, theirs: Answer, ours: Answer) -> None:
    """Status, content type and headers; over gRPC, which carries no headers back, without
    the ones TorchServe's REST API adds (`RELAYED`)."""
    expected = theirs.headers if pair.protocol == "rest" else {}
    assert (ours.status, ours.content_type, ours.headers) == (
        theirs.status, theirs.content_type, expected)


# what the handler is given


async def test_a_json_body(pair: Pair) -> None:
    theirs, ours = await pair.both("POST", "/predictions/echo", json={"a": [1, 2]},
                                   headers={"X-Session": "s-1"})
    same(pair, theirs, ours)
    assert theirs.content_type is None  # the echo handler sets none: none is invented
    if pair.protocol == "rest":
        assert seen(ours) == seen(theirs)
        assert seen(ours)[0] == [{"name": "body", "type": "dict", "value": {"a": [1, 2]}}]
        assert seen(ours)[1]["X-Session"] == "s-1"
    else:  # gRPC: bytes without a content type, and no headers at all
        [given], headers = seen(ours)
        assert (given["name"], given["type"]) == ("body", "bytearray")
        assert json.loads(given["value"]) == {"a": [1, 2]}
        assert headers == {"body": {"content-type": ""}}


@pytest.mark.parametrize("method", ["PUT", "POST", "GET"])
async def test_raw_bytes_without_a_content_type(pair: Pair, method: str) -> None:
    data = b"" if method == "GET" else b"\x89PNG kitten"
    theirs, ours = await pair.both(method, "/predictions/echo", data=data,
                                   skip_auto_headers=["Content-Type"])
    same(pair, theirs, ours)
    assert seen(ours)[0] == seen(theirs)[0] == [
        {"name": "body", "type": "bytearray", "value": data.decode("latin-1")}]


async def test_a_form_reaches_the_handler_as_its_fields(pair: Pair) -> None:
    theirs, ours = await pair.both("POST", "/predictions/echo", data={"a": "1 2", "b": "3"})
    same(pair, theirs, ours)
    assert seen(theirs)[0] == [{"name": "a", "type": "bytearray", "value": "1 2"},
                               {"name": "b", "type": "bytearray", "value": "3"}]
    same_inputs(pair, theirs, ours)


async def test_a_multipart_body_reaches_the_handler_as_its_parts(pair: Pair) -> None:
    def form() -> aiohttp.FormData:
        data = aiohttp.FormData()
        data.add_field("text", "hello")
        data.add_field("file", b"\x00\x01 bytes", filename="k.bin",
                       content_type="application/octet-stream")
        return data

    async with pair.direct.post("/predictions/echo", data=form()) as direct:
        theirs = await _answer(direct, RELAYED)
    ours = await _answer(await pair.gateway.http.post("/predictions/echo", data=form()),
                         RELAYED)
    same(pair, theirs, ours)
    assert [i["name"] for i in seen(theirs)[0]] == ["text", "file"]
    same_inputs(pair, theirs, ours)
    if pair.protocol == "rest":  # each part's content type too
        assert seen(ours)[1]["file"] == {"content-type": "application/octet-stream"}


# what the handler answers


async def test_the_handlers_status_headers_and_content_type(pair: Pair) -> None:
    chosen = {"set-status": "422", "set-content-type": "text/x-report",
              "set-header-X-Verdict": "rejected"}
    theirs, ours = await pair.both("POST", "/predictions/echo", data=b"{}", headers=chosen,
                                   relayed=(*RELAYED, "X-Verdict"))
    assert (theirs.status, theirs.content_type, theirs.headers["X-Verdict"]) == (
        422, "text/x-report", "rejected")
    if pair.protocol == "rest":
        same(pair, theirs, ours)
        assert seen(ours) == seen(theirs)
    else:  # gRPC carries no headers to the handler, and no status or headers back
        assert (ours.status, ours.content_type, "X-Verdict" in ours.headers) == (
            200, None, False)


async def test_a_streaming_handler(pair: Pair) -> None:
    theirs, ours = await pair.both("POST", "/predictions/streaming", json={"parts": 2})
    same(pair, theirs, ours)
    assert ours.body == theirs.body == b"part 0\npart 1\ndone\n"


async def test_both_versions(pair: Pair) -> None:
    for path in ("/predictions/tiny", "/predictions/tiny/1", "/predictions/tiny/2"):
        theirs, ours = await pair.both("POST", path, json={"x": [[1.0, 2.0, 3.0, 4.0]]})
        same(pair, theirs, ours)
        assert json.loads(ours.body) == json.loads(theirs.body), path


async def test_explanations(pair: Pair) -> None:
    theirs, ours = await pair.both("POST", "/explanations/echo", json={"a": 1})
    assert theirs.status == 200
    assert seen(theirs)[1]["explain"] == "True"
    if pair.protocol == "rest":
        same(pair, theirs, ours)
        assert seen(ours) == seen(theirs)
    else:  # TorchServe's gRPC API has no explanations
        assert ours.status == 501
        assert ours.json()["type"] == "MethodNotAllowedException"


# failures


def error_of(answer: Answer) -> dict[str, Any]:
    assert answer.content_type == "application/json"
    document = answer.json()
    assert set(document) == {"code", "type", "message"}
    return dict(document)


@pytest.mark.parametrize(("path", "status"), [
    ("/predictions/nope", 404), ("/predictions/tiny/9", 404), ("/explanations/nope", 404)])
async def test_unknown_models_and_versions(pair: Pair, path: str, status: int) -> None:
    theirs, ours = await pair.both("POST", path, json={"x": [[1.0, 2.0, 3.0, 4.0]]})
    assert (ours.status, error_of(ours)) == (theirs.status, error_of(theirs)) == (
        status, error_of(theirs))


async def test_a_handler_that_raises(pair: Pair) -> None:
    theirs, ours = await pair.both("POST", "/predictions/failing", json={})
    assert error_of(theirs) == {"code": 503, "type": "InternalServerException",
                                "message": "Prediction failed"}
    assert (ours.status, error_of(ours)) == (theirs.status, error_of(theirs))


@pytest.mark.parametrize("status", [422, 507])
async def test_a_prediction_exception_keeps_its_status_over_rest(pair: Pair,
                                                                 status: int) -> None:
    asked = {"fail-status": status, "fail-message": "no good"}
    theirs, ours = await pair.both("POST", "/predictions/failing", json=asked)
    assert error_of(theirs) == {"code": status, "type": "InternalServerException",
                                "message": "no good"}
    if pair.protocol == "rest":
        assert (ours.status, error_of(ours)) == (theirs.status, error_of(theirs))
    else:  # gRPC says only INVALID_ARGUMENT (4xx) or INTERNAL
        expected = 400 if status < 500 else 500
        assert (ours.status, error_of(ours)) == (expected, {
            "code": expected, "type": "InternalServerException", "message": "no good"})


async def test_a_body_over_torchserves_limit(pair: Pair) -> None:
    body = b"x" * (7 * 1024 * 1024)  # TorchServe's max_request_size is 6.5 MB
    async with pair.direct.post("/predictions/echo", data=io.BytesIO(body)) as direct:
        # TorchServe answers first and discards the rest as it comes; closed with the body
        # still buffered, the socket would close only once it is all sent, after this test
        assert direct.connection is not None and direct.connection.transport is not None
        transport = direct.connection.transport
        theirs = await _answer(direct, RELAYED)
        transport.abort()
    ours = await _answer(await pair.gateway.http.post("/predictions/echo",
                                                      data=io.BytesIO(body)), RELAYED)
    assert (theirs.status, theirs.content_type, theirs.body) == (413, None, b"")
    if pair.protocol == "rest":
        same(pair, theirs, ours)
        assert ours.body == b""
        # the gateway's connection, closed by aiohttp with the body still going, closes
        # once TorchServe has taken the rest: before the test's loop ends
        await wait_until(lambda: not closing_with_bytes_unsent())
    else:  # TorchServe resets the gRPC stream: the gateway cannot tell why
        assert ours.status == 500


def closing_with_bytes_unsent() -> list[asyncio.Transport]:
    """Sockets closed with bytes unsent: asyncio holds one open until its peer takes them."""
    return [t for t in gc.get_objects() if isinstance(t, asyncio.Transport)
            and t.is_closing() and t.get_write_buffer_size()]


async def test_ping(pair: Pair) -> None:
    for method in ("GET", "POST"):
        theirs, ours = await pair.both(method, "/ping")
        assert (ours.status, ours.content_type, ours.headers) == (  # the gateway's own
            theirs.status, theirs.content_type, theirs.headers)
        assert ours.json() == theirs.json() == {"status": "Healthy"}


async def test_no_backend_address_or_name_reaches_a_client(
        start_gateway: StartGateway, torchserve: TorchServe, tmp_path: Path) -> None:
    """Every failure the TorchServe backend can give, on every REST door."""
    gw = await start_gateway(torchserve_config(torchserve, protocol="rest", models=MODELS))
    port = str(torchserve.ports.inference)
    for path, body in (("/predictions/failing", {"fail-status": 507}),
                       ("/predictions/tiny/9", {}), ("/v2/models/failing/infer",
                                                      {"inputs": []})):
        response = await gw.http.post(path, json=body)
        text = await response.text()
        assert response.status >= 400, path
        assert port not in text and "127.0.0.1" not in text and "backend ts" not in text, text


# the in-process ONNX `demo` behind the same door, where TorchServe's behaviour defines it


async def test_onnx_answers_unknown_versions_and_models_as_torchserve(pair: Pair) -> None:
    cases = [("/predictions/tiny/9", "/predictions/demo/9"),
             ("/predictions/nope", "/predictions/nope")]
    for theirs_path, ours_path in cases:
        async with pair.direct.post(theirs_path, json=[[1.0, 2.0, 3.0, 4.0]]) as direct:
            theirs = await _answer(direct, ())
        ours = await _answer(await pair.gateway.http.post(ours_path,
                                                          json=[[1.0, 2.0, 3.0, 4.0]]), ())
        expected = error_of(theirs)
        expected["message"] = expected["message"].replace("tiny", "demo")
        assert (ours.status, error_of(ours)) == (theirs.status, expected), ours_path


async def test_onnx_versions_answer_through_the_door(pair: Pair) -> None:
    for path in ("/predictions/demo", "/predictions/demo/1"):
        response = await pair.gateway.http.post(path, json={"x": [[1.0, 2.0, 3.0, 4.0]]})
        assert response.status == 200, await response.text()
        assert list(await response.json()) == ["probabilities"]
