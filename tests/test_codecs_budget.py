"""`gateway.codecs.budget` and what every decoder does with it: client-declared shapes, counts
and nesting are checked before anything is allocated, with messages naming the limit and its
config key; the attacks that once gave 500s or built 400 MB from 36 bytes, one by one. Also
TF Serving's rules for JSON numbers (tensorflow_serving/util/json_tensor.cc), which every JSON
dialect follows."""

from __future__ import annotations

import asyncio
import struct
import threading
import tracemalloc
from typing import Any

import numpy as np
import pytest

from gateway.codecs import jsonio, offload, tensor_proto, torchserve_json, v2_grpc, v2_json
from gateway.codecs.arrays import to_array
from gateway.codecs.budget import DEFAULT_BUDGET, DecodeBudget
from gateway.codecs.tfserving_json import parse_predict
from gateway.dtypes import BY_V2, BYTES
from gateway.errors import BadRequest, GatewayError, PayloadTooLarge
from gateway.types import ModelMetadata, TensorSpec
from protos.inference import grpc_service_pb2 as pb
from protos.tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

SMALL = DecodeBudget(max_tensor_elements=100, max_request_elements=150, max_batch_rows=10,
                     max_dims=4)


def proto(dtype: int, dims: list[int], **fields: Any) -> tensor_pb2.TensorProto:
    return tensor_pb2.TensorProto(dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims]), **fields)


def infer(*tensors: tuple[str, str, list[int]], raw: list[bytes] | None = None
          ) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    for name, datatype, shape in tensors:
        request.inputs.add(name=name, datatype=datatype, shape=shape)
    request.raw_input_contents.extend(raw or [])
    return request


def model(*inputs: TensorSpec) -> ModelMetadata:
    return ModelMetadata("m", "1", ("1",), "onnxruntime_onnx", inputs,
                         (TensorSpec("y", BY_V2["FP32"], (-1,)),))


def nested(value: Any, depth: int) -> Any:
    for _ in range(depth):
        value = [value]
    return value


# --- the budget itself ----------------------------------------------------------------------


def test_defaults_are_the_documented_ones() -> None:
    documented = DecodeBudget(max_tensor_elements=4_194_304, max_request_elements=8_388_608,
                              max_batch_rows=65_536, max_dims=32)
    assert documented == DEFAULT_BUDGET


@pytest.mark.parametrize(("shape", "error", "message"), [
    ([25_000_000, 4], PayloadTooLarge, "tensor 'x' has 25000000x4 = 100000000 elements; the "
     "limit is 4194304 ([server.decode] max_tensor_elements)"),
    ([2**63, 2**63], PayloadTooLarge, f"tensor 'x' has {2**63}x{2**63} = {2**126} elements; "
     "the limit is 4194304 ([server.decode] max_tensor_elements)"),
    ([0, 2**62], PayloadTooLarge, f"tensor 'x' has a dim of {2**62}; the limit is 4194304 "
     "([server.decode] max_tensor_elements)"),
    ([65_537, 1], PayloadTooLarge,
     "tensor 'x' has 65537 rows; the limit is 65536 ([server.decode] max_batch_rows)"),
    ([1] * 33, BadRequest,
     "tensor 'x' has 33 dimensions; the limit is 32 ([server.decode] max_dims)"),
    ([2, -1], BadRequest, "tensor 'x': shape [2, -1] has a negative dim"),
])
def test_a_shape_over_budget_is_refused_naming_the_limit(shape: list[int],
                                                         error: type[GatewayError],
                                                         message: str) -> None:
    with pytest.raises(error) as caught:
        DEFAULT_BUDGET.check_shape("x", shape)
    assert type(caught.value) is error
    assert caught.value.message == message


def test_shapes_within_budget_give_their_element_count() -> None:
    assert DEFAULT_BUDGET.check_shape("x", []) == 1
    assert DEFAULT_BUDGET.check_shape("x", [65_536, 64]) == 4_194_304
    assert DEFAULT_BUDGET.check_shape("x", [0, 4_194_304]) == 0


def test_a_request_tally_counts_every_tensor() -> None:
    tally = SMALL.request()
    assert tally.add("a", [10, 10]) == 100
    assert tally.add("b", [5, 10]) == 50
    with pytest.raises(PayloadTooLarge) as caught:
        tally.add("c", [1])
    assert caught.value.message == ("the request's tensors have 151 elements together "
                                    "(counting 'c'); the limit is 150 ([server.decode] "
                                    "max_request_elements)")


# --- TF Serving gRPC: the one-value broadcast -------------------------------------------------


def test_one_float_val_with_a_huge_shape_is_refused_before_it_is_built() -> None:
    attack = proto(types_pb2.DT_FLOAT, [25_000_000, 4], float_val=[1.0])
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooLarge) as caught:
            tensor_proto.decode_inputs({"x": attack})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.http_status == 413 and caught.value.grpc_code == "RESOURCE_EXHAUSTED"
    assert caught.value.message == ("tensor 'x' has 25000000x4 = 100000000 elements; the limit "
                                    "is 4194304 ([server.decode] max_tensor_elements)")
    assert peak < 1024 * 1024


def test_a_million_by_a_million_is_refused_not_a_memory_error() -> None:
    with pytest.raises(PayloadTooLarge, match="1000000x1000000 = 1000000000000 elements"):
        tensor_proto.decode_inputs({"x": proto(types_pb2.DT_FLOAT, [10**6, 10**6],
                                               float_val=[1.0])})


def test_a_broadcast_within_budget_still_fills_the_shape() -> None:
    got = tensor_proto.decode_inputs({"x": proto(types_pb2.DT_FLOAT, [10, 10],
                                                 float_val=[2.0])}, budget=SMALL)
    assert got["x"].shape == (10, 10) and (got["x"] == 2.0).all()


def test_tensor_proto_request_total_is_budgeted() -> None:
    inputs = {name: proto(types_pb2.DT_FLOAT, [10, 10], float_val=[1.0]) for name in "ab"}
    with pytest.raises(PayloadTooLarge, match="max_request_elements"):
        tensor_proto.decode_inputs(inputs, budget=SMALL)


@pytest.mark.parametrize(("attack", "fragment"), [
    (proto(types_pb2.DT_FLOAT, [1] * 65, float_val=[1.0]), "has 65 dimensions; the limit is 32"),
    (proto(types_pb2.DT_FLOAT, [2**63 - 1], float_val=[1.0]), "the limit is 4194304"),
    (proto(types_pb2.DT_FLOAT, [0, 2**62]), f"has a dim of {2**62}"),
    (proto(types_pb2.DT_STRING, [10**7], string_val=[b"a"]), "10000000 elements"),
    (proto(types_pb2.DT_FLOAT, [3], float_val=[1.0, 2.0]), "2 values for shape [3]"),
])
def test_tensor_proto_attacks_are_4xx(attack: tensor_pb2.TensorProto, fragment: str) -> None:
    with pytest.raises(GatewayError) as caught:
        tensor_proto.decode_inputs({"x": attack})
    assert caught.value.http_status in (400, 413)
    assert fragment in caught.value.message


def test_half_val_keeps_the_low_16_bits_as_tf_does() -> None:
    got = tensor_proto.decode_inputs({"x": proto(types_pb2.DT_HALF, [2], half_val=[
        0x10000 | int(np.float16(1.5).view(np.uint16)), -1])})
    assert got["x"].view(np.uint16).tolist() == [int(np.float16(1.5).view(np.uint16)), 0xFFFF]


def test_backend_replies_are_not_budgeted() -> None:
    """A TF Serving backend's reply is sized by its model (the adapter passes no budget)."""
    reply = proto(types_pb2.DT_FLOAT, [70_000, 1], float_val=[0.5])
    assert tensor_proto.to_array(reply, "y").shape == (70_000, 1)
    with pytest.raises(PayloadTooLarge):
        tensor_proto.to_array(reply, "y", budget=DEFAULT_BUDGET)


# --- v2 gRPC ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("request_", "error", "fragment"), [
    (infer(("x", "FP32", [1] * 65), raw=[b"\0" * 4]), BadRequest,
     "tensor 'x' has 65 dimensions; the limit is 32 ([server.decode] max_dims)"),
    (infer(("x", "FP32", [0, 2**62]), raw=[b""]), PayloadTooLarge, f"has a dim of {2**62}"),
    (infer(("x", "FP32", [2**63 - 1]), raw=[b""]), PayloadTooLarge, "the limit is 4194304"),
    (infer(("s", "BYTES", [10**7]), raw=[b""]), PayloadTooLarge, "10000000 elements"),
    (infer(("x", "FP32", [2**62, 2**62]), raw=[b""]), PayloadTooLarge, "max_tensor_elements"),
    (infer(("a", "FP32", [64, 65_536]), ("b", "FP32", [64, 65_536]), ("c", "FP32", [1])),
     PayloadTooLarge, "the request's tensors have 8388609 elements together (counting 'c'); "
     "the limit is 8388608 ([server.decode] max_request_elements)"),
])
def test_v2_grpc_attacks_are_refused_before_building(request_: pb.ModelInferRequest,
                                                     error: type[GatewayError],
                                                     fragment: str) -> None:
    with pytest.raises(error) as caught:
        v2_grpc.decode_inputs(request_)
    assert fragment in caught.value.message


def length_prefixed(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


@pytest.mark.parametrize("items", [
    [b"ab"] * 12, [b""] * 12, [bytes([i]) * (i % 3) for i in range(12)],
    [b"\0\0\0\0"] * 12, [b"\xed\xa0\x80", b"x"] * 6])
def test_raw_bytes_split_exactly_whether_or_not_they_share_a_length(
        items: list[bytes]) -> None:
    got = v2_grpc.decode_inputs(infer(("s", "BYTES", [3, 4]), raw=[length_prefixed(items)]))
    assert got["s"].shape == (3, 4)
    assert got["s"].reshape(-1).tolist() == items
    assert all(type(v) is bytes for v in got["s"].reshape(-1))


@pytest.mark.parametrize(("data", "fragment"), [
    (length_prefixed([b"ab"] * 13), "raw BYTES hold more than 12 elements"),
    (length_prefixed([b"ab"] * 11), "raw BYTES hold 11 elements, shape [3, 4] needs 12"),
    (length_prefixed([b"ab"] * 12)[:-1], "BYTES element 11 has length 2, only 1 bytes follow"),
    (length_prefixed([b"ab"] * 12) + b"\0\0", "truncated BYTES length prefix"),
    (b"\xff\xff\xff\xff" * 12, "BYTES element 0 has length 4294967295"),
])
def test_raw_bytes_that_do_not_fit_the_shape_are_400(data: bytes, fragment: str) -> None:
    with pytest.raises(BadRequest) as caught:
        v2_grpc.decode_inputs(infer(("s", "BYTES", [3, 4]), raw=[data]))
    assert fragment in caught.value.message


async def test_large_bytes_tensors_decode_in_a_worker_thread(
        monkeypatch: pytest.MonkeyPatch) -> None:
    items = [bytes([i % 7]) * (i % 3) for i in range(5000)]
    request = infer(("s", "BYTES", [50, 100]), raw=[length_prefixed(items)])
    threads: list[int] = []
    to_thread = asyncio.to_thread

    async def recording(func: Any, *args: Any) -> Any:
        threads.append(threading.get_ident())
        return await to_thread(func, *args)

    monkeypatch.setattr(asyncio, "to_thread", recording)
    small = await v2_grpc.decode_inputs_async(request)
    assert not threads  # 5000 elements: inline
    monkeypatch.setattr(offload, "INLINE_ELEMENTS", 1000)
    large = await v2_grpc.decode_inputs_async(request)
    assert threads
    assert small["s"].tolist() == large["s"].tolist() == np.array(
        items, dtype=object).reshape(50, 100).tolist()
    strings = {"s": proto(types_pb2.DT_STRING, [5000], string_val=items)}
    assert (await tensor_proto.decode_inputs_async(strings))["s"].tolist() == items
    assert len(threads) == 2


async def test_async_decoding_checks_the_budget_before_any_thread() -> None:
    with pytest.raises(PayloadTooLarge):
        await v2_grpc.decode_inputs_async(infer(("s", "BYTES", [10**7]), raw=[b""]))
    with pytest.raises(PayloadTooLarge):
        await tensor_proto.decode_inputs_async(
            {"s": proto(types_pb2.DT_STRING, [10**7], string_val=[b"a"])})


# --- JSON: nesting, surrogates, huge shapes ---------------------------------------------------


@pytest.mark.parametrize("dtype", ["BYTES", "FP32", "INT64", "BOOL"])
@pytest.mark.parametrize("depth", [33, 900, 5000])
def test_nesting_deeper_than_max_dims_is_400_before_recursion(dtype: str, depth: int) -> None:
    leaf = {"BYTES": "a", "FP32": 1.0, "INT64": 1, "BOOL": True}[dtype]
    with pytest.raises(BadRequest) as caught:
        to_array(nested(leaf, depth), BY_V2[dtype], "x")
    assert caught.value.message == ("tensor 'x' is nested more than 32 lists deep; the limit "
                                    "is 32 dimensions ([server.decode] max_dims)")


def test_deep_nesting_hidden_past_the_first_row_is_ragged_not_a_crash() -> None:
    for dtype in (BYTES, BY_V2["FP32"]):
        with pytest.raises(BadRequest, match="ragged"):
            to_array([["a" if dtype is BYTES else 1.0], nested("a", 900)], dtype, "x")


def test_v2_json_bytes_nested_900_deep_is_400() -> None:
    document = {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1],
                            "data": nested("a", 900)}]}
    with pytest.raises(BadRequest, match="nested more than 32 lists deep"):
        v2_json.parse_infer(document)


def test_tf_serving_json_nested_too_deep_is_400() -> None:
    body = parse_predict({"instances": [nested("a", 40)]})
    with pytest.raises(BadRequest, match="nested more than 32 lists deep"):
        body.decode(model(TensorSpec("s", BYTES, (-1,))))


@pytest.mark.parametrize(("shape", "error", "fragment"), [
    ([2**63], PayloadTooLarge, f"tensor 'x' has {2**63} = {2**63} elements"),
    ([0, 2**62], PayloadTooLarge, "has a dim of"),
    ([1] * 65, BadRequest, "has 65 dimensions; the limit is 32"),
    ([2**64, 2**64], PayloadTooLarge, "max_tensor_elements"),
])
def test_v2_json_declared_shapes_over_budget(shape: list[int], error: type[GatewayError],
                                             fragment: str) -> None:
    with pytest.raises(error) as caught:
        v2_json.parse_infer({"inputs": [{"name": "x", "datatype": "FP32", "shape": shape,
                                         "data": []}]})
    assert fragment in caught.value.message


def test_v2_json_request_total_is_budgeted() -> None:
    tensor = {"datatype": "INT8", "shape": [10, 10], "data": [0] * 100}  # flat data: fine
    assert v2_json.parse_infer({"inputs": [{"name": "a", **tensor}]}, budget=SMALL).inputs[
        "a"].shape == (10, 10)
    with pytest.raises(PayloadTooLarge, match=r"200 elements together .* max_request_elements"):
        v2_json.parse_infer({"inputs": [{"name": "a", **tensor}, {"name": "b", **tensor}]},
                            budget=SMALL)


def test_v2_json_data_larger_than_its_shape_is_refused_within_budget() -> None:
    with pytest.raises(PayloadTooLarge, match="101 elements"):
        v2_json.parse_infer({"inputs": [{"name": "a", "datatype": "FP32", "shape": [1],
                                         "data": [0.0] * 101}]}, budget=SMALL)


def test_tf_serving_rows_are_budgeted_before_decoding() -> None:
    with pytest.raises(PayloadTooLarge) as caught:
        parse_predict({"instances": [[1.0]] * 11}, budget=SMALL)
    assert caught.value.message == ("the request has 11 rows; the limit is 10 "
                                    "([server.decode] max_batch_rows)")


def test_tf_serving_columnar_total_is_budgeted() -> None:
    body = parse_predict({"inputs": {"a": [[1.0] * 10] * 10, "b": [[1.0] * 10] * 10}},
                         budget=SMALL)
    signature = model(TensorSpec("a", BY_V2["FP32"], (-1, 10)),
                      TensorSpec("b", BY_V2["FP32"], (-1, 10)))
    with pytest.raises(PayloadTooLarge, match="max_request_elements"):
        body.decode(signature)


def test_torchserve_bodies_are_budgeted() -> None:
    decode = torchserve_json.body_decoder(b'{"x": [[1, 2], [3, 4]]}', budget=DecodeBudget(
        max_tensor_elements=3))
    with pytest.raises(PayloadTooLarge, match="2x2 = 4 elements; the limit is 3"):
        decode(model(TensorSpec("x", BY_V2["FP32"], (-1, 2))))


def test_a_torchserve_reply_nested_deep_is_the_backends_fault_not_a_crash() -> None:
    with pytest.raises(GatewayError) as caught:
        torchserve_json.decode_reply(b'{"out": ' + b"[" * 900 + b'"a"' + b"]" * 900 + b"}")
    assert caught.value.http_status == 502


@pytest.mark.parametrize("value", [["\ud800"], [["ok", "\udfff"]], "\udbff"])
def test_lone_surrogates_in_bytes_data_are_400(value: Any) -> None:
    with pytest.raises(BadRequest, match="not valid Unicode"):
        to_array(value, BYTES, "s")


def test_lone_surrogate_in_v2_id_is_refused_at_parse_time() -> None:
    tensor = {"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}
    with pytest.raises(BadRequest, match="'id' is not valid Unicode"):
        v2_json.parse_infer({"id": "req-\ud800", "inputs": [tensor]})
    with pytest.raises(BadRequest, match="output name is not valid Unicode"):
        v2_json.parse_infer({"inputs": [tensor], "outputs": [{"name": "\udc00"}]})
    with pytest.raises(BadRequest, match="name is not valid Unicode"):
        v2_json.parse_infer({"inputs": [{**tensor, "name": "\ud800"}]})


@pytest.mark.parametrize("body", [
    b'{"id": "\\ud800", "inputs": [NaN]}', b'["\\udc00"]', b'[NaN, {"\\ud800": 1}]',
    b'{"inputs": [Infinity, "\\ud83d"]}'])
def test_json_with_lone_surrogates_is_refused_by_the_parser(body: bytes) -> None:
    with pytest.raises(BadRequest, match="lone surrogate"):
        jsonio.loads(body)


def test_json_with_paired_surrogate_escapes_is_read() -> None:
    assert jsonio.loads(b'[NaN, "\\ud83d\\ude00"]')[1] == "\U0001f600"
    assert jsonio.loads(b'["\\\\ud800"]') == ["\\ud800"]  # an escaped backslash, not a surrogate


# --- JSON numbers, as TF Serving converts them ----------------------------------------------
# json_tensor.cc: AddValueToTensor and IsLosslessDecimal; rapidjson refuses numbers beyond a
# double (kParseErrorNumberTooBig) and reads NaN/Infinity (kParseNanAndInfFlag).

ACCEPTED: list[tuple[str, Any, Any]] = [
    ("FP32", [16777215, -16777215], [16777215.0, -16777215.0]),
    ("FP32", [16777217.0], [16777216.0]),  # a decimal rounds; only integers must be lossless
    ("FP32", [1e30, 3, 0.5], [1.0000000150474662e30, 3.0, 0.5]),
    ("FP32", [3.4028234663852886e38, -1e-50], [3.4028234663852886e38, -0.0]),
    ("FP32", [float("nan"), float("inf"), float("-inf")], None),
    ("FP32", [2**64], [1.8446744073709552e19]),  # beyond uint64: rapidjson reads a double
    ("FP64", [2**53 - 1, 1e308], [2.0**53 - 1, 1e308]),
    ("INT32", [2**31 - 1, -(2**31)], [2**31 - 1, -(2**31)]),
    ("INT64", [2**63 - 1, -(2**63)], [2**63 - 1, -(2**63)]),
    ("UINT32", [2**32 - 1], [2**32 - 1]),
    ("UINT64", [2**64 - 1, 0], [2**64 - 1, 0]),
    ("BOOL", [True, False], [True, False]),
    ("BYTES", ["a", {"b64": "YQ=="}], [b"a", b"a"]),
]


@pytest.mark.parametrize(("v2", "value", "expected"), ACCEPTED)
def test_json_numbers_tf_serving_accepts(v2: str, value: Any, expected: Any) -> None:
    array = to_array(value, BY_V2[v2], "x")
    assert array.dtype == BY_V2[v2].numpy
    if expected is not None:
        assert array.tolist() == expected


REFUSED: list[tuple[str, Any, str]] = [
    ("FP32", [16777216], "integer 16777216 cannot become FP32 without loss of precision"),
    ("FP32", [-16777217], "without loss of precision (the limit is +-16777215)"),
    ("FP32", [0.5, 16777217], "integer 16777217 cannot become FP32 without loss"),
    ("FP32", [[0.5], [10**40]], "values out of range for FP32"),
    ("FP16", [70000], "values out of range for FP16"),
    ("FP64", [2**53], "integer 9007199254740992 cannot become FP64 without loss"),
    ("FP32", [3.5e38], "values out of range for FP32"),
    ("FP32", [True, 1.0], "expected FP32 (numbers), got booleans mixed with numbers"),
    ("FP32", [[1, 2], [False, 3]], "got booleans mixed with numbers"),
    ("FP32", [True], "expected FP32 (numbers), got booleans"),
    ("FP32", ["1"], "got strings"),
    ("FP32", [None], "got mixed values"),
    ("FP32", [1, None], "got mixed values"),
    ("INT32", [1.0], "expected INT32 (integers), got numbers with fractions"),
    ("INT32", [float("nan")], "got numbers with fractions"),
    ("INT32", [2**31], "values out of range for INT32"),
    ("INT32", [1, True], "got booleans mixed with numbers"),
    ("INT64", [2**63], "values out of range for INT64"),
    ("INT64", [-(2**63) - 1], "values out of range for INT64"),
    ("UINT32", [-1], "values out of range for UINT32"),
    ("UINT64", [2**64], "values out of range for UINT64"),
    ("INT8", [128], "values out of range for INT8"),  # TF would wrap it: we refuse instead
    ("BOOL", [1], "expected BOOL (booleans), got integers"),
    ("BOOL", [True, 1], "expected BOOL (booleans), got integers"),
    ("BOOL", [None], "expected BOOL"),
    ("BYTES", [1], "expected BYTES"),
    ("BYTES", [None], "expected BYTES"),
    ("BYTES", [{"b64": "!"}], "invalid base64"),
]


@pytest.mark.parametrize(("v2", "value", "fragment"), REFUSED)
def test_json_numbers_tf_serving_refuses(v2: str, value: Any, fragment: str) -> None:
    with pytest.raises(BadRequest) as caught:
        to_array(value, BY_V2[v2], "x")
    assert fragment in caught.value.message


@pytest.mark.parametrize("literal", [b"1e400", b"-1e400", b"1E+999", b"9" * 400])
def test_numbers_no_double_holds_are_refused_by_the_parser(literal: bytes) -> None:
    for body in (b"[" + literal + b"]", b"[NaN, " + literal + b"]"):
        with pytest.raises(BadRequest, match="too large for a double"):
            jsonio.loads(body)


def test_nan_infinity_and_tiny_numbers_are_read() -> None:
    got = jsonio.loads(b"[NaN, Infinity, -Infinity, 1e-400, 1e308]")
    assert np.isnan(got[0]) and got[1:] == [float("inf"), float("-inf"), 0.0, 1e308]


def test_json_numbers_in_every_dialect_follow_the_same_rules() -> None:
    signature = model(TensorSpec("x", BY_V2["FP32"], (-1,)))
    with pytest.raises(BadRequest, match="without loss of precision"):
        parse_predict({"instances": [16777217]}).decode(signature)
    with pytest.raises(BadRequest, match="without loss of precision"):
        v2_json.parse_infer({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1],
                                         "data": [16777217]}]})
    with pytest.raises(BadRequest, match="without loss of precision"):
        torchserve_json.body_decoder(b"[16777217]")(signature)
