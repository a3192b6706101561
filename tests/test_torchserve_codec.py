"""`gateway.codecs.torchserve_json`: tensors to a handler's JSON and back, and the TorchServe
dialect's body typed by a target's signature."""

from __future__ import annotations

import numpy as np
import pytest

from gateway import dtypes
from gateway.codecs import torchserve_json
from gateway.errors import BackendError, BadRequest
from gateway.types import ModelMetadata, TensorSpec

SIGNATURE = ModelMetadata(
    name="m", version="1", versions=("1",), platform="onnx",
    inputs=(TensorSpec("x", dtypes.BY_V2["FP32"], (-1, 2)),), outputs=())


def test_tensors_go_out_as_one_object_of_named_lists() -> None:
    encoded = torchserve_json.encode({"x": np.array([[0.1, 2.0]], np.float32),
                                      "n": np.array([3], np.int64)})
    assert encoded == b'{"x":[[0.1,2.0]],"n":[3]}'
    assert torchserve_json.encode({"x": np.array([np.nan], np.float32)}) == b'{"x":[NaN]}'


def test_a_reply_object_is_tensors_typed_by_their_values() -> None:
    outputs = torchserve_json.decode_reply(
        b'{"i": [[1, 2]], "f": [0.5, 1], "b": [true], "s": ["cat", "dog"]}')
    assert {name: (a.dtype.kind, a.shape) for name, a in outputs.items()} == {
        "i": ("i", (1, 2)), "f": ("f", (2,)), "b": ("b", (1,)), "s": ("O", (2,))}
    assert outputs["f"].dtype == np.float64
    assert list(outputs["s"]) == [b"cat", b"dog"]


def test_other_replies_are_one_unnamed_output() -> None:
    listed = torchserve_json.decode_reply(b"[[0.25, 0.75]]")
    np.testing.assert_array_equal(listed["output"], [[0.25, 0.75]])
    raw = torchserve_json.decode_reply(b"\x89PNG\r\n")
    assert list(raw) == ["output"] and raw["output"].tolist() == [b"\x89PNG\r\n"]


@pytest.mark.parametrize("reply", [b'{"x": [[1, 2], [3]]}', b'{"x": [{"a": 1}]}'])
def test_replies_that_are_not_tensors_are_the_backends_fault(reply: bytes) -> None:
    with pytest.raises(BackendError):
        torchserve_json.decode_reply(reply)


def test_a_body_is_typed_by_the_targets_signature_named_or_not() -> None:
    for body in (b'{"x": [[1, 2]]}', b"[[1, 2]]"):
        tensors = torchserve_json.body_decoder(body)(SIGNATURE)
        assert list(tensors) == ["x"] and tensors["x"].dtype == np.float32
        np.testing.assert_array_equal(tensors["x"], [[1.0, 2.0]])
    with pytest.raises(BadRequest, match="no input named 'y'"):
        torchserve_json.body_decoder(b'{"y": [[1, 2]]}')(SIGNATURE)
