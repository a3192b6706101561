"""Triton's binary tensor data extension on the v2 REST door, byte for byte: inputs whose data
follows the JSON (`Inference-Header-Content-Length`, `binary_data_size`), outputs returned as
binary data when asked (`binary_data_output`, an output's `binary_data`), and every way a size
can lie refused with 400 naming it. tests/test_v2_tritonclient.py drives the same door with
Triton's own client."""

from __future__ import annotations

import gzip
import json
import struct
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from gateway.codecs.v2_binary import CONTENT_TYPE, HEADER_LENGTH
from gateway.codecs.v2_json import decode_tensor, encode_reply, parse_infer
from gateway.errors import BadRequest
from gateway.types import InferResponse
from tests.test_rest_tfserving import expected_probabilities

ROWS = [[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.0, 2.0]]
X = {"name": "x", "datatype": "FP32", "shape": [2, 4]}


def binary_body(document: Any, *chunks: bytes) -> tuple[bytes, dict[str, str]]:
    """A request as tritonclient.http sends one: the JSON, then each input's binary data."""
    header = json.dumps(document).encode()
    return header + b"".join(chunks), {HEADER_LENGTH: str(len(header))}


def length_prefixed(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


async def split_reply(reply: ClientResponse) -> tuple[dict[str, Any], bytes]:
    body = await reply.read()
    assert reply.status == 200, body
    assert reply.content_type == CONTENT_TYPE
    length = int(reply.headers[HEADER_LENGTH])
    return json.loads(body[:length]), body[length:]


async def test_binary_inputs_and_a_mix_of_binary_and_json_outputs(client: TestClient) -> None:
    a = np.float32([[1, 2], [0.5, 0.5]])
    s = length_prefixed("ü€".encode(), b"")
    body, headers = binary_body({
        "id": "bin-1",
        "inputs": [{"name": "a", "datatype": "FP32", "shape": [2, 2],
                    "parameters": {"binary_data_size": a.nbytes}},
                   {"name": "b", "datatype": "INT64", "shape": [2, 1], "data": [3, -1]},
                   {"name": "s", "datatype": "BYTES", "shape": [2],
                    "parameters": {"binary_data_size": len(s)}}],
        "outputs": [{"name": "sum", "parameters": {"binary_data": True}},
                    {"name": "s_bytes", "parameters": {"binary_data": False}}]},
        a.tobytes(), s)
    document, data = await split_reply(
        await client.post("/v2/models/multi/infer", data=body, headers=headers))
    assert document["id"] == "bin-1" and document["model_name"] == "multi"
    assert document["outputs"] == [
        {"name": "sum", "datatype": "FP32", "shape": [2, 2],
         "parameters": {"binary_data_size": 16}},
        {"name": "s_bytes", "datatype": "BYTES", "shape": [2], "data": ["ü€", ""]}]
    np.testing.assert_array_equal(np.frombuffer(data, "<f4").reshape(2, 2),
                                  [[4, 5], [-0.5, -0.5]])


async def test_binary_data_output_returns_every_output_as_binary(client: TestClient) -> None:
    body, headers = binary_body({"inputs": [{**X, "data": ROWS}],
                                 "parameters": {"binary_data_output": True}})
    document, data = await split_reply(
        await client.post("/v2/models/demo/infer", data=body, headers=headers))
    assert document["outputs"] == [{"name": "probabilities", "datatype": "FP32",
                                    "shape": [2, 3], "parameters": {"binary_data_size": 24}}]
    np.testing.assert_allclose(np.frombuffer(data, "<f4").reshape(2, 3),
                               expected_probabilities(ROWS), rtol=1e-6)


async def test_an_output_may_stay_json_when_the_request_asks_for_binary(
        client: TestClient) -> None:
    body, headers = binary_body({"inputs": [{**X, "data": ROWS}],
                                 "parameters": {"binary_data_output": True},
                                 "outputs": [{"name": "probabilities",
                                              "parameters": {"binary_data": False}}]})
    reply = await client.post("/v2/models/demo/infer", data=body, headers=headers)
    assert reply.status == 200 and reply.content_type == "application/json"
    assert HEADER_LENGTH not in reply.headers
    [output] = (await reply.json())["outputs"]
    np.testing.assert_allclose(np.reshape(output["data"], (2, 3)),
                               expected_probabilities(ROWS), rtol=1e-6)


async def test_binary_input_with_a_json_reply(client: TestClient) -> None:
    x = np.float32(ROWS)
    body, headers = binary_body({"inputs": [{**X, "parameters": {"binary_data_size": 32}}]},
                                x.tobytes())
    reply = await client.post("/v2/models/demo/infer", data=body, headers=headers)
    assert reply.status == 200 and reply.content_type == "application/json"
    [output] = (await reply.json())["outputs"]
    np.testing.assert_allclose(np.reshape(output["data"], (2, 3)),
                               expected_probabilities(ROWS), rtol=1e-6)


async def test_a_gzipped_binary_body(client: TestClient) -> None:
    """The header's length counts the JSON as sent before compression (tritonclient's
    `request_compression_algorithm`)."""
    x = np.float32(ROWS)
    body, headers = binary_body({"inputs": [{**X, "parameters": {"binary_data_size": 32}}],
                                 "parameters": {"binary_data_output": True}}, x.tobytes())
    _, data = await split_reply(await client.post(
        "/v2/models/demo/infer", data=gzip.compress(body),
        headers={**headers, "Content-Encoding": "gzip"}))
    np.testing.assert_allclose(np.frombuffer(data, "<f4").reshape(2, 3),
                               expected_probabilities(ROWS), rtol=1e-6)


def with_size(size: Any, **tensor: Any) -> dict[str, Any]:
    return {"inputs": [{**X, **tensor, "parameters": {"binary_data_size": size}}]}


X_DATA = bytes(32)


@pytest.mark.parametrize(("document", "tail", "length", "fragment"), [
    (with_size(32), X_DATA, "abc",
     "Inference-Header-Content-Length must be a non-negative integer, got 'abc'"),
    (with_size(32), X_DATA, "-4", "Inference-Header-Content-Length must be a non-negative"),
    (with_size(32), X_DATA, "99999", "Inference-Header-Content-Length is 99999, but the "
                                      "body has"),
    (with_size(32), X_DATA, "0", "request body is empty"),
    (with_size("32"), X_DATA, None, "'binary_data_size' must be a non-negative integer"),
    (with_size(True), X_DATA, None, "'binary_data_size' must be a non-negative integer"),
    (with_size(-32), X_DATA, None, "'binary_data_size' must be a non-negative integer"),
    (with_size(28), X_DATA, None,
     "input 'x': binary_data_size is 28, shape [2, 4] of FP32 needs 32"),
    (with_size(32), bytes(8), None, "binary_data_size is 32, but only 8 bytes of binary data "
                                    "are left after the JSON header"),
    (with_size(32), bytes(36), None, "4 bytes of binary data follow the inputs' binary data"),
    (with_size(32, data=ROWS), X_DATA, None, "input 'x': has both 'data' and "
                                              "binary_data_size"),
    ({"inputs": [{"name": "s", "datatype": "BYTES", "shape": [3],
                  "parameters": {"binary_data_size": 8}}]}, bytes(8), None,
     "binary_data_size is 8; 3 BYTES elements need at least 12"),
    ({"inputs": [{"name": "s", "datatype": "BYTES", "shape": [1],
                  "parameters": {"binary_data_size": 6}}]}, b"\x09\0\0\0ab", None,
     "input 's': BYTES element 0 has length 9, only 2 bytes follow"),
    ({"inputs": [{**X, "data": ROWS}], "parameters": {"binary_data_output": "yes"}}, b"", None,
     "parameter 'binary_data_output' must be a boolean"),
    ({"inputs": [{**X, "data": ROWS}], "outputs": [
        {"name": "probabilities", "parameters": {"binary_data": 1}}]}, b"", None,
     "output 'probabilities': parameter 'binary_data' must be a boolean"),
    ({"inputs": [{**X, "data": ROWS}], "outputs": [
        {"name": "probabilities", "parameters": {"classification": 2}}]}, b"", None,
     "the classification extension is not supported"),
    ({"inputs": [{**X, "parameters": {"shared_memory_region": "r"}}]}, b"", None,
     "input 'x': shared memory is not supported"),
])
async def test_every_lie_about_sizes_is_400_naming_it(
        client: TestClient, document: Any, tail: bytes, length: str | None,
        fragment: str) -> None:
    body, headers = binary_body(document, tail)
    if length is not None:
        headers[HEADER_LENGTH] = length
    reply = await client.post("/v2/models/multi/infer" if document["inputs"][0]["name"] == "s"
                              else "/v2/models/demo/infer", data=body, headers=headers)
    assert reply.status == 400, await reply.text()
    assert fragment in (await reply.json())["error"]


async def test_binary_data_without_the_header_is_400(client: TestClient) -> None:
    """Without `Inference-Header-Content-Length` the whole body is JSON, so the binary data
    an input announces is not there (and trailing bytes make the JSON malformed)."""
    reply = await client.post("/v2/models/demo/infer", json=with_size(32))
    assert reply.status == 400
    assert "only 0 bytes of binary data are left" in (await reply.json())["error"]


async def test_a_shape_over_budget_is_refused_before_its_size_is_looked_at(
        client: TestClient) -> None:
    body, headers = binary_body({"inputs": [{"name": "x", "datatype": "FP32",
                                             "shape": [2**40, 4],
                                             "parameters": {"binary_data_size": 2**44}}]},
                                bytes(16))
    reply = await client.post("/v2/models/demo/infer", data=body, headers=headers)
    assert reply.status == 413
    assert "max_tensor_elements" in (await reply.json())["error"]


async def test_only_the_extension_served_is_advertised(client: TestClient) -> None:
    assert (await (await client.get("/v2")).json())["extensions"] == ["binary_tensor_data"]
    for path in ("/v2/repository/index", "/v2/repository/models/demo/load",
                 "/v2/repository/models/demo/unload"):
        assert (await client.post(path, json={})).status == 404, path


# --- the codec, for what no in-process model can run ----------------------------------------


def test_bf16_and_bool_binary_inputs_and_outputs() -> None:
    bf16 = np.array([[1.5, -2.0, 256.0]], dtype=ml_dtypes.bfloat16)
    flags = bytes([0, 1, 2, 255])  # any non-zero byte is true
    header, headers = binary_body({"inputs": [
        {"name": "h", "datatype": "BF16", "shape": [1, 3],
         "parameters": {"binary_data_size": 6}},
        {"name": "f", "datatype": "BOOL", "shape": [4], "parameters": {"binary_data_size": 4}}],
        "parameters": {"binary_data_output": True, "temperature": 0.5}},
        bf16.tobytes(), flags)
    length = int(headers[HEADER_LENGTH])
    request = parse_infer(json.loads(header[:length]), binary=memoryview(header)[length:])
    assert request.inputs["h"].dtype == bf16.dtype
    np.testing.assert_array_equal(request.inputs["h"], bf16)
    assert request.inputs["f"].tolist() == [False, True, True, True]
    assert request.parameters == {"temperature": 0.5}  # binary_data_output is the door's
    reply = encode_reply(InferResponse("m", "1", request.inputs), request.binary_outputs)
    assert [o["parameters"] for o in reply.document["outputs"]] == [
        {"binary_data_size": 6}, {"binary_data_size": 4}]
    assert reply.binary == [bf16.tobytes(), bytes([0, 1, 1, 1])]


def test_a_decoded_binary_input_is_a_view_of_the_body_not_a_copy() -> None:
    body = np.arange(4, dtype="<i4").tobytes()
    request = parse_infer({"inputs": [{"name": "i", "datatype": "INT32", "shape": [4],
                                       "parameters": {"binary_data_size": 16}}]},
                          binary=memoryview(body))
    assert request.inputs["i"].tolist() == [0, 1, 2, 3]
    assert not request.inputs["i"].flags.owndata


def test_binary_data_is_not_taken_where_no_body_carries_it() -> None:
    with pytest.raises(BadRequest, match="binary data is not accepted here"):
        decode_tensor({**X, "parameters": {"binary_data_size": 32}}, 0)


@pytest.mark.parametrize(("parameters", "outputs", "expected"), [
    ({}, None, {"a": False, "b": False}),  # the common request: every output in the JSON
    ({"binary_data_output": True}, None, {"a": True, "b": True}),
    ({}, [{"name": "a", "parameters": {"binary_data": True}}, {"name": "b"}],
     {"a": True, "b": False}),
    ({"binary_data_output": True}, [{"name": "b", "parameters": {"binary_data": False}}],
     {"a": True, "b": False}),
])
def test_each_request_gets_its_own_binary_output_choice(
        parameters: dict[str, Any], outputs: list[dict[str, Any]] | None,
        expected: dict[str, bool]) -> None:
    inputs = [{**X, "data": [0.5] * 8}]
    document: dict[str, Any] = {**({"outputs": outputs} if outputs else {}),
                                "inputs": inputs, "parameters": parameters}
    choice = parse_infer(document).binary_outputs
    assert {name: choice(name) for name in expected} == expected
    assert parse_infer({"inputs": inputs}).binary_outputs("a") is False  # none carried over
