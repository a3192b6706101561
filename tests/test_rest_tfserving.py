"""TF Serving REST dialect against a gateway on a free port."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from aiohttp.test_utils import TestClient

from scripts.make_demo_model import BIAS, WEIGHTS


def expected_probabilities(rows: list[list[float]]) -> np.ndarray:
    logits = np.asarray(rows, np.float32) @ WEIGHTS + BIAS
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


async def test_predict_row_format_returns_three_probabilities_per_row(client: TestClient) -> None:
    rows = [[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.0, 2.0]]
    reply = await client.post("/v1/models/demo:predict", json={"instances": rows})
    assert reply.status == 200
    predictions = np.asarray((await reply.json())["predictions"])
    assert predictions.shape == (2, 3)
    np.testing.assert_allclose(predictions.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(predictions, expected_probabilities(rows), rtol=1e-5)


async def test_predict_columnar_named_input(client: TestClient) -> None:
    reply = await client.post("/v1/models/demo/versions/1:predict",
                              json={"inputs": {"x": [[1, 2, 3, 4]]}, "signature_name": "x"})
    assert reply.status == 200
    outputs = (await reply.json())["outputs"]  # a single output goes unnamed
    np.testing.assert_allclose(outputs, expected_probabilities([[1, 2, 3, 4]]), rtol=1e-5)


async def test_predict_by_label(client: TestClient) -> None:
    reply = await client.post("/v1/models/demo/labels/stable:predict",
                              json={"instances": [[0, 0, 0, 0]]})
    assert reply.status == 200
    assert len((await reply.json())["predictions"][0]) == 3


async def test_named_instances_strings_and_b64(client: TestClient) -> None:
    text = base64.b64encode("ü€".encode()).decode()
    instances = [{"a": [1.0, 2.0], "b": [3], "s": {"b64": text}},
                 {"a": [0.5, 0.5], "b": [-1], "s": "text"}]
    reply = await client.post("/v1/models/multi:predict", json={"instances": instances})
    assert reply.status == 200, await reply.text()
    predictions = (await reply.json())["predictions"]
    assert predictions[0]["sum"] == [4.0, 5.0]
    assert predictions[1]["sum"] == [-0.5, -0.5]
    # outputs named *_bytes come back base64-encoded, as TF Serving does
    assert base64.b64decode(predictions[0]["s_bytes"]["b64"]).decode() == "ü€"
    assert base64.b64decode(predictions[1]["s_bytes"]["b64"]) == b"text"


async def test_columnar_multiple_outputs_are_named(client: TestClient) -> None:
    reply = await client.post("/v1/models/multi:predict",
                              json={"inputs": {"a": [[1, 1]], "b": [[2]], "s": ["x"]}})
    assert reply.status == 200
    outputs = (await reply.json())["outputs"]
    assert outputs["sum"] == [[3.0, 3.0]]
    assert outputs["s_bytes"] == [{"b64": base64.b64encode(b"x").decode()}]


async def test_nan_and_infinity_literals(client: TestClient) -> None:
    reply = await client.post("/v1/models/multi:predict",
                              data=b'{"inputs": {"a": [[NaN, Infinity]], "b": [[1]], "s": ["x"]}}')
    assert reply.status == 200
    assert '"sum":[[NaN,Infinity]]' in await reply.text()


async def test_status_and_metadata(client: TestClient) -> None:
    status = await (await client.get("/v1/models/demo")).json()
    assert status == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE",
         "status": {"error_code": "OK", "error_message": ""}}]}
    assert (await client.get("/v1/models/demo/versions/1")).status == 200
    metadata = await (await client.get("/v1/models/demo/metadata")).json()
    signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert metadata["model_spec"]["version"] == "1"
    assert signature["inputs"]["x"]["dtype"] == "DT_FLOAT"
    assert signature["inputs"]["x"]["tensor_shape"]["dim"] == [
        {"size": "-1", "name": ""}, {"size": "4", "name": ""}]
    assert signature["outputs"]["probabilities"]["dtype"] == "DT_FLOAT"


@pytest.mark.parametrize(("path", "body", "status", "fragment"), [
    ("/v1/models/demo:predict", b"{not json", 400, "malformed JSON"),
    ("/v1/models/demo:predict", b'{"instances": [[1,2,3,4]], "inputs": [[1,2,3,4]]}', 400,
     "both 'instances' and 'inputs'"),
    ("/v1/models/demo:predict", b'{"instances": [[1,2,3,4],[1,2]]}', 400, "ragged"),
    ("/v1/models/demo:predict", b'{"instances": [[1,2,3]]}', 400,
     "input 'x': expected shape [-1, 4], got [1, 3]"),
    ("/v1/models/demo:predict", b'{"instances": [["a","b","c","d"]]}', 400, "expected FP32"),
    ("/v1/models/demo:predict", b'{"inputs": {"y": [[1,2,3,4]]}}', 400, "no input named 'y'"),
    ("/v1/models/multi:predict", b'{"inputs": {"a": [[1,1]], "s": ["x"]}}', 400,
     "missing input 'b'"),
    ("/v1/models/multi:predict", b'{"inputs": {"a": [[1,1]], "b": [[1.5]], "s": ["x"]}}', 400,
     "expected INT64"),
    ("/v1/models/demo:predict", b'{"signature_name": "x"}', 400, "needs 'instances'"),
    ("/v1/models/nope:predict", b'{"instances": [[1,2,3,4]]}', 404, "model 'nope' not found"),
    ("/v1/models/demo/versions/7:predict", b'{"instances": [[1,2,3,4]]}', 404, "version 7"),
    ("/v1/models/demo/labels/canary:predict", b'{"instances": [[1,2,3,4]]}', 404,
     "no label 'canary'"),
    ("/v1/models/multi:predict",
     b'{"inputs": {"a": [[1,1]], "b": [[1]], "s": [{"b64": "/w=="}]}}', 400, "not valid UTF-8"),
    ("/v1/models/demo:classify", b'{"examples": []}', 400, "no classify signature"),
])
async def test_errors(client: TestClient, path: str, body: bytes, status: int,
                      fragment: str) -> None:
    reply = await client.post(path, data=body)
    assert reply.status == status
    assert reply.content_type == "application/json"
    assert fragment in (await reply.json())["error"]


async def test_get_on_predict_is_405(client: TestClient) -> None:
    reply = await client.get("/v1/models/demo:predict")
    assert reply.status == 405
    assert "POST" in (await reply.json())["error"]
