"""Every decoder, driven with generated hostile inputs under a small budget: each input decodes
to arrays within the budget or is refused with a 4xx GatewayError, never anything else.

The cases are the same every run (derandomized); together with tests/test_fuzz_doors.py they
are more than 10,000 per run. Each test also checks that both outcomes occurred, so a
strategy that stopped reaching the decoders' success paths would be noticed.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from gateway.codecs import jsonio, tensor_proto, torchserve_json, v2_binary, v2_grpc, v2_json
from gateway.codecs.tfserving_json import parse_predict
from gateway.errors import BackendError, BadRequest
from gateway.types import ModelMetadata, Tensors
from tests.fuzz_support import (
    SIGNATURES,
    SMALL_BUDGET,
    counts,
    decoded_or_refused,
    fuzz_settings,
    infer_requests,
    json_bodies,
    json_values,
    predict_requests,
    tf_json_documents,
    v2_binary_bodies,
    v2_documents,
)

T = TypeVar("T")


def fuzz_decoder(cases: st.SearchStrategy[T], examples: int,
                 decode: Callable[[T], Tensors]) -> None:
    """`decode(case)` for `examples` generated cases: each decodes within `SMALL_BUDGET` or is
    refused with a 4xx; both outcomes must be common (at least a tenth each)."""
    seen = Counter[str]()

    @fuzz_settings(examples)
    @given(cases)
    def run(case: T) -> None:
        decoded_or_refused(lambda: decode(case), SMALL_BUDGET, seen)

    run()
    decoded = seen["decoded"]
    refused = sum(n for key, n in seen.items() if key.startswith("refused"))
    assert decoded + refused == examples, counts(seen)
    assert decoded >= examples // 10 and refused >= examples // 10, counts(seen)


@st.composite
def tf_cases(draw: st.DrawFn) -> tuple[ModelMetadata, Any]:
    model = draw(st.sampled_from(SIGNATURES))
    return model, draw(tf_json_documents(model))


def test_tf_serving_json_row_and_columnar() -> None:
    fuzz_decoder(tf_cases(), 1600, lambda case: parse_predict(
        case[1], budget=SMALL_BUDGET).decode(case[0]))


def test_v2_json() -> None:
    fuzz_decoder(v2_documents(), 1600,
                 lambda document: v2_json.parse_infer(document, budget=SMALL_BUDGET).inputs)


def decode_binary_body(case: tuple[bytes, str | None]) -> Tensors:
    body, header_length = case
    header, binary = v2_binary.split_body(body, header_length)
    return v2_json.parse_infer(jsonio.loads(header), budget=SMALL_BUDGET, binary=binary).inputs


def test_v2_rest_binary_tensor_data() -> None:
    """Sizes that lie (to the shape, to the bytes left, to the header's length), junk in the
    binary parameters, truncated or padded binary data."""
    fuzz_decoder(v2_binary_bodies(), 1600, decode_binary_body)


@st.composite
def json_body_cases(draw: st.DrawFn) -> tuple[str, ModelMetadata, bytes]:
    dialect = draw(st.sampled_from(["tfserving", "v2", "torchserve"]))
    model = draw(st.sampled_from(SIGNATURES))
    documents = v2_documents() if dialect == "v2" else tf_json_documents(model)
    if dialect == "torchserve":  # a body is TF Serving's columnar "inputs" value
        documents = documents.map(lambda d: d.get("inputs", d) if isinstance(d, dict) else d)
    return dialect, model, draw(json_bodies(documents))


def decode_body(case: tuple[str, ModelMetadata, bytes]) -> Tensors:
    dialect, model, body = case
    if dialect == "torchserve":
        return torchserve_json.body_decoder(body, budget=SMALL_BUDGET)(model)
    document = jsonio.loads(body)
    if dialect == "v2":
        return v2_json.parse_infer(document, budget=SMALL_BUDGET).inputs
    return parse_predict(document, budget=SMALL_BUDGET).decode(model)


def test_json_bodies_of_every_dialect() -> None:
    """From the bytes a client sends: NaN and Infinity literals, `1e400`, lone surrogate
    escapes, deep nesting, bodies that are not JSON or not UTF-8."""
    fuzz_decoder(json_body_cases(), 1500, decode_body)


def test_tf_serving_predict_request_tensor_protos() -> None:
    fuzz_decoder(predict_requests(), 1600, lambda request: tensor_proto.decode_inputs(
        request.inputs, budget=SMALL_BUDGET))


def test_v2_grpc_model_infer_request_contents_and_raw() -> None:
    fuzz_decoder(infer_requests(), 1600,
                 lambda request: v2_grpc.decode_inputs(request, budget=SMALL_BUDGET))


def test_torchserve_handler_replies_are_tensors_or_the_backends_fault() -> None:
    """A handler's reply is not the client's input: anything but tensors is a BackendError
    (502), never an unhandled exception."""
    examples, seen = 600, Counter[str]()

    @fuzz_settings(examples)
    @given(st.builds(lambda v: jsonio.dumps(v) if _orjson_can(v) else b"\xff", json_values())
           | st.binary(max_size=30))
    def run(reply: bytes) -> None:
        try:
            tensors = torchserve_json.decode_reply(reply)
        except BackendError:
            seen["backend error"] += 1
            return
        assert all(isinstance(a, np.ndarray) for a in tensors.values())
        seen["decoded"] += 1

    run()
    assert seen["decoded"] and seen["backend error"], counts(seen)


def test_json_parser_refuses_what_tf_serving_refuses() -> None:
    """Whatever it reads holds no lone surrogate and no infinity that was not written as
    `Infinity` (`1e400` is refused, as rapidjson refuses it)."""
    examples, seen = 600, Counter[str]()

    @fuzz_settings(examples)
    @given(json_bodies(json_values()))
    def run(body: bytes) -> None:
        try:
            document = jsonio.loads(body)
        except BadRequest:
            seen["refused"] += 1
            return
        jsonio.dumps(document)  # orjson refuses lone surrogates: none got through
        if b"Infinity" not in body:
            assert not _has_infinity(document), body[:80]
        seen["read"] += 1

    run()
    assert seen["read"] and seen["refused"], counts(seen)


def _orjson_can(value: Any) -> bool:
    try:
        jsonio.dumps(value)
    except TypeError:
        return False
    return True


def _has_infinity(value: Any) -> bool:
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, float) and math.isinf(item):
            return True
        if isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, dict):
            pending.extend(item.values())
    return False
