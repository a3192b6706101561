"""TF Serving REST JSON codec: `:predict` request parsing and decoding against a signature,
response shaping, and the status and metadata documents.

The rules follow TF Serving's documented REST API (tensorflow_serving/g3doc/api_rest.md):
`instances` (row) or `inputs` (columnar) but not both, `{"b64": ...}` for binary strings,
outputs named `*_bytes` written as `{"b64": ...}`, one output unnamed, several as per-row
objects (row format) or an object of named outputs (columnar), NaN/Infinity literals allowed.
"""

from __future__ import annotations

import base64
import math
from typing import Any

import ml_dtypes
import numpy as np
import orjson
import pytest

from gateway.codecs import jsonio
from gateway.codecs.tfserving_json import (
    PredictBody,
    encode_metadata,
    encode_predict,
    encode_status,
    parse_predict,
)
from gateway.dtypes import BY_V2
from gateway.errors import BadRequest
from gateway.types import ModelMetadata, Tensors, TensorSpec, VersionStatus


def spec(name: str, v2: str, *shape: int) -> TensorSpec:
    return TensorSpec(name, BY_V2[v2], tuple(shape))


def model(*inputs: TensorSpec, outputs: tuple[TensorSpec, ...] = (),
          name: str = "m") -> ModelMetadata:
    outs = outputs or (spec("y", "FP32", -1),)
    return ModelMetadata(name, "3", ("1", "3"), "onnxruntime_onnx", tuple(inputs), outs)


ONE_FLOAT = model(spec("x", "FP32", -1, 2))
ONE_INT64 = model(spec("ids", "INT64", -1))
ONE_STRING = model(spec("text", "BYTES", -1))
MULTI = model(spec("a", "FP32", -1, 2), spec("b", "INT32", -1, 1), spec("s", "BYTES", -1))


def decode(document: dict[str, Any], signature: ModelMetadata) -> Tensors:
    return parse_predict(document).decode(signature)


def b64(raw: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(raw).decode()}


def wire(document: Any, *, nonfinite: bool = False) -> Any:
    """What a client reads: the document through the gateway's writer and a strict parser."""
    return orjson.loads(jsonio.dumps(document, nonfinite=nonfinite))


# --- request parsing ------------------------------------------------------------------------


def test_parse_row_format() -> None:
    body = parse_predict({"instances": [[1.0, 2.0]]})
    assert body == PredictBody(row_format=True, payload=[[1.0, 2.0]], signature_name=None)


def test_parse_columnar_format() -> None:
    body = parse_predict({"inputs": {"x": [[1.0, 2.0]]}})
    assert body == PredictBody(row_format=False, payload={"x": [[1.0, 2.0]]},
                               signature_name=None)


def test_signature_name_is_accepted_and_kept() -> None:
    assert parse_predict({"signature_name": "serving_default",
                          "instances": [1]}).signature_name == "serving_default"
    assert parse_predict({"signature_name": "other", "inputs": [1]}).signature_name == "other"


def test_signature_name_must_be_a_string() -> None:
    with pytest.raises(BadRequest, match="signature_name"):
        parse_predict({"signature_name": 7, "instances": [1]})


def test_both_instances_and_inputs_is_bad_request() -> None:
    with pytest.raises(BadRequest, match="both 'instances' and 'inputs'"):
        parse_predict({"instances": [[1.0, 2.0]], "inputs": [[1.0, 2.0]]})


def test_neither_instances_nor_inputs_is_bad_request() -> None:
    with pytest.raises(BadRequest, match=r"'instances'.*'inputs'"):
        parse_predict({"signature_name": "serving_default"})


@pytest.mark.parametrize("document", [[], [1, 2], "instances", None, 3])
def test_body_must_be_an_object(document: Any) -> None:
    with pytest.raises(BadRequest, match="JSON object"):
        parse_predict(document)


@pytest.mark.parametrize("instances", [[], {}, "x", 1, None])
def test_instances_must_be_a_non_empty_list(instances: Any) -> None:
    with pytest.raises(BadRequest, match="non-empty list"):
        parse_predict({"instances": instances})


# --- row format (`instances`) ---------------------------------------------------------------


def test_row_unnamed_single_input_takes_dtype_from_signature() -> None:
    tensors = decode({"instances": [[1, 2], [3, 4]]}, ONE_FLOAT)  # JSON ints, DT_FLOAT input
    assert list(tensors) == ["x"]
    assert tensors["x"].dtype == np.float32
    np.testing.assert_array_equal(tensors["x"], np.array([[1, 2], [3, 4]], np.float32))


def test_row_unnamed_ints_become_int64_when_signature_says_int64() -> None:
    tensors = decode({"instances": [1, -2, 2**40]}, ONE_INT64)
    assert tensors["ids"].dtype == np.int64
    assert tensors["ids"].tolist() == [1, -2, 2**40]


def test_row_unnamed_scalars_per_instance() -> None:
    tensors = decode({"instances": [1.5, 2.5, 5.0]}, model(spec("x", "FP32", -1)))
    assert tensors["x"].shape == (3,)
    np.testing.assert_array_equal(tensors["x"], np.array([1.5, 2.5, 5.0], np.float32))


def test_row_unnamed_keeps_per_instance_tensor_shape() -> None:
    # The documented example: two instances, each a [1, 2] tensor.
    tensors = decode({"instances": [[[1, 2]], [[3, 4]]]}, model(spec("x", "INT32", -1, 1, 2)))
    assert tensors["x"].shape == (2, 1, 2)
    assert tensors["x"].dtype == np.int32


def test_row_named_inputs_are_stacked_per_input() -> None:
    instances = [{"a": [1.0, 2.0], "b": [3], "s": "foo"},
                 {"a": [0.5, 0.25], "b": [-1], "s": "bar"}]
    tensors = decode({"instances": instances}, MULTI)
    assert set(tensors) == {"a", "b", "s"}
    assert tensors["a"].dtype == np.float32 and tensors["a"].shape == (2, 2)
    np.testing.assert_array_equal(tensors["a"], np.array([[1, 2], [0.5, 0.25]], np.float32))
    assert tensors["b"].dtype == np.int32
    assert tensors["b"].tolist() == [[3], [-1]]
    assert tensors["s"].dtype == object
    assert tensors["s"].tolist() == [b"foo", b"bar"]


def test_row_named_b64_decodes_to_bytes_and_plain_strings_to_utf8() -> None:
    instances = [{"a": [1, 2], "b": [0], "s": b64(b"\x00\xff\x10")},
                 {"a": [3, 4], "b": [1], "s": "h\u00e9"}]
    tensors = decode({"instances": instances}, MULTI)
    assert tensors["s"].tolist() == [b"\x00\xff\x10", "h\u00e9".encode()]
    assert all(type(v) is bytes for v in tensors["s"].flat)


def test_row_unnamed_b64_objects_are_values_not_named_inputs() -> None:
    tensors = decode({"instances": [b64(b"\x89PNG"), b64(b"")]}, ONE_STRING)
    assert tensors["text"].tolist() == [b"\x89PNG", b""]


def test_row_unnamed_strings_for_string_input() -> None:
    tensors = decode({"instances": ["foo", "bar", "baz"]}, ONE_STRING)
    assert tensors["text"].shape == (3,)
    assert tensors["text"].tolist() == [b"foo", b"bar", b"baz"]


def test_row_instances_naming_different_inputs_is_bad_request() -> None:
    instances = [{"a": [1, 2], "b": [1], "s": "x"}, {"a": [1, 2], "b": [1]}]
    with pytest.raises(BadRequest, match="instance 1 does not name the same inputs"):
        decode({"instances": instances}, MULTI)


def test_row_named_then_unnamed_instance_is_bad_request() -> None:
    with pytest.raises(BadRequest, match="instance 1"):
        decode({"instances": [{"x": [1, 2]}, [3, 4]]}, ONE_FLOAT)


def test_row_unnamed_form_for_multi_input_model_is_bad_request() -> None:
    with pytest.raises(BadRequest, match=r"has 3 inputs \(a, b, s\): name them"):
        decode({"instances": [[1.0, 2.0]]}, MULTI)


def test_row_unknown_input_name_is_bad_request_naming_it() -> None:
    with pytest.raises(BadRequest, match="no input named 'nope'") as caught:
        decode({"instances": [{"nope": [1.0, 2.0]}]}, ONE_FLOAT)
    assert "inputs: x" in caught.value.message


def test_row_ragged_is_bad_request() -> None:
    with pytest.raises(BadRequest, match="ragged"):
        decode({"instances": [[1.0, 2.0], [3.0]]}, ONE_FLOAT)


def test_row_named_ragged_across_instances_is_bad_request() -> None:
    instances = [{"a": [1, 2], "b": [1], "s": "x"}, {"a": [1, 2, 3], "b": [1], "s": "y"}]
    with pytest.raises(BadRequest, match="ragged"):
        decode({"instances": instances}, MULTI)


def test_row_ragged_strings_is_bad_request() -> None:
    with pytest.raises(BadRequest, match="ragged"):
        decode({"instances": [["a", "b"], ["c"]]}, ONE_STRING)


def test_float_for_int_input_is_bad_request() -> None:
    with pytest.raises(BadRequest, match="'ids': expected INT64"):
        decode({"instances": [1, 2.5]}, ONE_INT64)


def test_whole_float_for_int_input_is_bad_request() -> None:
    # TF Serving wants JSON integers for integer tensors: 1.0 is a float token.
    with pytest.raises(BadRequest, match="expected INT64"):
        decode({"instances": [1.0]}, ONE_INT64)


def test_strings_for_float_input_is_bad_request() -> None:
    with pytest.raises(BadRequest, match=r"'x': expected FP32.*got strings"):
        decode({"instances": [["1.0", "2.0"]]}, ONE_FLOAT)


def test_bool_for_float_input_is_bad_request() -> None:
    with pytest.raises(BadRequest, match="got booleans"):
        decode({"instances": [[True, False]]}, ONE_FLOAT)


def test_number_for_string_input_is_bad_request() -> None:
    with pytest.raises(BadRequest, match="'text': expected BYTES"):
        decode({"instances": ["ok", 5]}, ONE_STRING)


def test_null_for_float_input_is_bad_request() -> None:
    with pytest.raises(BadRequest, match="'x'"):
        decode({"instances": [[1.0, None]]}, ONE_FLOAT)


def test_int_out_of_range_for_signature_dtype_is_bad_request() -> None:
    with pytest.raises(BadRequest, match="out of range for UINT8"):
        decode({"instances": [1, 256]}, model(spec("u", "UINT8", -1)))


def test_invalid_b64_is_bad_request() -> None:
    with pytest.raises(BadRequest, match="invalid base64"):
        decode({"instances": [{"b64": "not base64!"}]}, ONE_STRING)


# --- columnar format (`inputs`) -------------------------------------------------------------


def test_columnar_unnamed_single_input() -> None:
    tensors = decode({"inputs": [[1, 2], [3, 4], [5, 6]]}, ONE_FLOAT)
    assert list(tensors) == ["x"]
    assert tensors["x"].dtype == np.float32
    assert tensors["x"].shape == (3, 2)


def test_columnar_unnamed_scalar() -> None:
    tensors = decode({"inputs": 7}, ONE_INT64)
    assert tensors["ids"].shape == ()
    assert tensors["ids"].dtype == np.int64
    assert tensors["ids"].item() == 7


def test_columnar_unnamed_b64_value() -> None:
    tensors = decode({"inputs": b64(b"\x00\x01")}, ONE_STRING)
    assert tensors["text"].shape == ()
    assert tensors["text"].item() == b"\x00\x01"


def test_columnar_named_inputs_may_differ_in_batch_size() -> None:
    document = {"inputs": {"a": [[1, 2]], "b": [[1], [2], [3]], "s": ["p", b64(b"q")]}}
    tensors = decode(document, MULTI)
    assert tensors["a"].shape == (1, 2) and tensors["a"].dtype == np.float32
    assert tensors["b"].shape == (3, 1) and tensors["b"].dtype == np.int32
    assert tensors["s"].tolist() == [b"p", b"q"]


def test_columnar_documented_example() -> None:
    signature = model(spec("tag", "BYTES", -1), spec("signal", "INT64", -1, 5),
                      spec("sensor", "FP32", -1, 2, 2))
    tensors = decode({"inputs": {"tag": ["foo", "bar"],
                                 "signal": [[1, 2, 3, 4, 5], [3, 4, 1, 2, 5]],
                                 "sensor": [[[1, 2], [3, 4]], [[4, 5], [6, 8]]]}}, signature)
    assert tensors["tag"].tolist() == [b"foo", b"bar"]
    assert tensors["signal"].dtype == np.int64 and tensors["signal"].shape == (2, 5)
    assert tensors["sensor"].dtype == np.float32 and tensors["sensor"].shape == (2, 2, 2)


def test_columnar_unnamed_form_for_multi_input_model_is_bad_request() -> None:
    with pytest.raises(BadRequest, match="name them"):
        decode({"inputs": [[1.0, 2.0]]}, MULTI)


def test_columnar_unknown_input_name_is_bad_request_naming_it() -> None:
    with pytest.raises(BadRequest, match="no input named 'z'"):
        decode({"inputs": {"a": [[1, 2]], "z": [1]}}, MULTI)


def test_columnar_ragged_is_bad_request() -> None:
    with pytest.raises(BadRequest, match="ragged"):
        decode({"inputs": {"a": [[1, 2], [3]], "b": [[1]], "s": ["x"]}}, MULTI)


def test_columnar_float_for_int_input_is_bad_request() -> None:
    with pytest.raises(BadRequest, match="'b': expected INT32"):
        decode({"inputs": {"a": [[1, 2]], "b": [[1.5]], "s": ["x"]}}, MULTI)


# --- NaN and Infinity -----------------------------------------------------------------------


def test_nonfinite_literals_are_accepted_on_input() -> None:
    document = jsonio.loads(b'{"instances": [NaN, Infinity, -Infinity]}')
    tensors = decode(document, model(spec("x", "FP32", -1)))
    x = tensors["x"]
    assert x.dtype == np.float32
    assert math.isnan(x[0]) and x[1] == np.inf and x[2] == -np.inf


def test_nonfinite_outputs_are_written_as_literals() -> None:
    outputs = {"y": np.array([np.nan, np.inf, -np.inf, 0.1], np.float32)}
    assert jsonio.has_nonfinite(outputs)
    body = jsonio.dumps(encode_predict(outputs, row_format=True), nonfinite=True)
    assert body == b'{"predictions":[NaN,Infinity,-Infinity,0.1]}'
    again = jsonio.loads(body)["predictions"]
    assert math.isnan(again[0]) and again[1:] == [math.inf, -math.inf, 0.1]


def test_nonfinite_float32_in_row_objects_keeps_shortest_form() -> None:
    outputs = {"p": np.array([[0.1, np.nan], [0.2, 0.3]], np.float32),
               "k": np.array([1, 2], np.int64)}
    body = jsonio.dumps(encode_predict(outputs, row_format=True), nonfinite=True)
    assert body == b'{"predictions":[{"p":[0.1,NaN],"k":1},{"p":[0.2,0.3],"k":2}]}'


def test_finite_outputs_do_not_need_nonfinite_writer() -> None:
    assert not jsonio.has_nonfinite({"y": np.array([0.1, 1e30], np.float32),
                                     "i": np.array([1, 2], np.int64)})


def test_bfloat16_nan_counts_as_nonfinite() -> None:
    outputs = {"y": np.array([1.0, np.nan], ml_dtypes.bfloat16)}
    assert jsonio.has_nonfinite(outputs)
    body = jsonio.dumps(encode_predict(outputs, row_format=False), nonfinite=True)
    assert body == b'{"outputs":[1.0,NaN]}'



@pytest.mark.parametrize("size", [1, 5, 32, 33, 300])  # Python's check up to 32, numpy's past
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, ml_dtypes.bfloat16])
@pytest.mark.parametrize("odd", [np.nan, np.inf, -np.inf])
def test_nonfinite_is_found_in_small_and_large_outputs(size: int, dtype: Any,
                                                       odd: float) -> None:
    array = np.ones((size, 1), dtype)
    assert not jsonio.has_nonfinite({"y": array})
    array[size // 2] = odd
    assert jsonio.has_nonfinite({"i": np.ones(3, np.int64), "y": array[:, :]})


# --- responses ------------------------------------------------------------------------------


def test_single_output_row_format_is_unnamed() -> None:
    outputs = {"y": np.array([[0.1, 0.2], [0.3, 0.4]], np.float32)}
    assert wire(encode_predict(outputs, row_format=True)) == {
        "predictions": [[0.1, 0.2], [0.3, 0.4]]}


def test_single_output_columnar_is_unnamed() -> None:
    outputs = {"y": np.array([3.5, 4.0, 5.5], np.float32)}
    assert jsonio.dumps(encode_predict(outputs, row_format=False)) == \
        b'{"outputs":[3.5,4.0,5.5]}'


def test_float32_output_serializes_in_shortest_form() -> None:
    outputs = {"y": np.array([0.1, 1 / 3, 16777216.0, 1e-7], np.float32)}
    assert jsonio.dumps(encode_predict(outputs, row_format=True)) == \
        b'{"predictions":[0.1,0.33333334,16777216.0,1e-7]}'


def test_multiple_outputs_row_format_are_per_row_objects() -> None:
    outputs = {"scores": np.array([[0.1, 0.9], [0.75, 0.25]], np.float32),
               "label": np.array([1, 0], np.int64),
               "ok": np.array([True, False])}
    assert wire(encode_predict(outputs, row_format=True)) == {"predictions": [
        {"scores": [0.1, 0.9], "label": 1, "ok": True},
        {"scores": [0.75, 0.25], "label": 0, "ok": False},
    ]}


def test_multiple_outputs_columnar_is_object_of_named_outputs() -> None:
    outputs = {"scores": np.array([[0.1, 0.9]], np.float32),
               "label": np.array([1, 0, 2], np.int64)}  # batch sizes may differ here
    assert wire(encode_predict(outputs, row_format=False)) == {"outputs": {
        "scores": [[0.1, 0.9]], "label": [1, 0, 2]}}


def test_multiple_outputs_mismatched_batch_row_format_is_bad_request() -> None:
    # TF Serving answers this with INVALID_ARGUMENT (400), in these words (json_tensor.cc,
    # MakeRowFormatJsonFromTensors): the client can ask for the columnar format instead.
    outputs = {"a": np.array([1.0, 2.0], np.float32), "b": np.array([1, 2, 3], np.int64)}
    with pytest.raises(BadRequest, match="differ in batch size") as caught:
        encode_predict(outputs, row_format=True)
    assert "Tensor name: b has inconsistent batch size: 3 expecting: 2" in caught.value.message
    assert caught.value.http_status == 400


def test_multiple_outputs_with_scalar_row_format_is_bad_request() -> None:
    outputs = {"a": np.array([1.0, 2.0], np.float32), "b": np.array(3, np.int64)}
    with pytest.raises(BadRequest, match="Tensor name: b has no shape information"):
        encode_predict(outputs, row_format=True)


def test_bytes_suffix_output_is_b64_and_other_strings_are_text() -> None:
    outputs = {"image_bytes": np.array([b"\x00\xff", b"ab"], dtype=object),
               "caption": np.array(["h\u00e9".encode(), b"sea"], dtype=object)}
    assert wire(encode_predict(outputs, row_format=True)) == {"predictions": [
        {"image_bytes": {"b64": "AP8="}, "caption": "h\u00e9"},
        {"image_bytes": {"b64": "YWI="}, "caption": "sea"},
    ]}
    assert wire(encode_predict(outputs, row_format=False)) == {"outputs": {
        "image_bytes": [{"b64": "AP8="}, {"b64": "YWI="}], "caption": ["h\u00e9", "sea"]}}


def test_single_bytes_suffix_output_is_b64() -> None:
    outputs = {"out_bytes": np.array([[b"\x01"], [b"\x02"]], dtype=object)}
    assert wire(encode_predict(outputs, row_format=True)) == {
        "predictions": [[{"b64": "AQ=="}], [{"b64": "Ag=="}]]}


def test_bytes_in_the_middle_of_a_name_is_not_b64() -> None:
    outputs = {"bytes_out": np.array([b"x"], dtype=object)}
    assert wire(encode_predict(outputs, row_format=False)) == {"outputs": ["x"]}


def test_scalar_single_output() -> None:
    assert wire(encode_predict({"y": np.array(2.5, np.float32)}, row_format=True)) == {
        "predictions": 2.5}


def test_bool_int_and_uint_outputs() -> None:
    outputs = {"b": np.array([True, False]), "u": np.array([255, 0], np.uint8),
               "i": np.array([-(2**63), 2**63 - 1], np.int64)}
    assert wire(encode_predict(outputs, row_format=False)) == {"outputs": {
        "b": [True, False], "u": [255, 0], "i": [-(2**63), 2**63 - 1]}}


def test_request_round_trip_through_decode_and_encode() -> None:
    tensors = decode({"instances": [[0.1, 0.2], [0.3, 0.4]]}, ONE_FLOAT)
    assert jsonio.dumps(encode_predict(tensors, row_format=True)) == \
        b'{"predictions":[[0.1,0.2],[0.3,0.4]]}'


# --- status and metadata --------------------------------------------------------------------


def test_encode_status_matches_tf_serving_document() -> None:
    document = encode_status([VersionStatus("123", "AVAILABLE"),
                              VersionStatus("124", "END", "failed to load: bad graph")])
    assert wire(document) == {"model_version_status": [
        {"version": "123", "state": "AVAILABLE",
         "status": {"error_code": "OK", "error_message": ""}},
        {"version": "124", "state": "END",
         "status": {"error_code": "UNKNOWN", "error_message": "failed to load: bad graph"}},
    ]}


def test_encode_status_empty() -> None:
    assert encode_status([]) == {"model_version_status": []}


def test_encode_metadata_matches_tf_serving_document() -> None:
    metadata = ModelMetadata("half_plus_two", "1", ("1",), "onnxruntime_onnx",
                             (spec("x", "FP32", -1, 1), spec("s", "BYTES", -1)),
                             (spec("y", "FP64", -1, 1),))
    assert wire(encode_metadata(metadata)) == {
        "model_spec": {"name": "half_plus_two", "signature_name": "", "version": "1"},
        "metadata": {"signature_def": {"signature_def": {"serving_default": {
            "inputs": {
                "x": {"dtype": "DT_FLOAT", "name": "x", "tensor_shape": {
                    "dim": [{"size": "-1", "name": ""}, {"size": "1", "name": ""}],
                    "unknown_rank": False}},
                "s": {"dtype": "DT_STRING", "name": "s", "tensor_shape": {
                    "dim": [{"size": "-1", "name": ""}], "unknown_rank": False}},
            },
            "outputs": {
                "y": {"dtype": "DT_DOUBLE", "name": "y", "tensor_shape": {
                    "dim": [{"size": "-1", "name": ""}, {"size": "1", "name": ""}],
                    "unknown_rank": False}},
            },
            "method_name": "tensorflow/serving/predict",
        }}}},
    }


def test_encode_metadata_signature_name_and_scalar_shape() -> None:
    metadata = model(spec("n", "INT64"), outputs=(spec("b", "BOOL", 2),), name="counter")
    document = encode_metadata(metadata, "serving_default")
    assert document["model_spec"] == {"name": "counter", "signature_name": "serving_default",
                                      "version": "3"}
    signature = document["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["n"] == {"dtype": "DT_INT64", "name": "n", "tensor_shape": {
        "dim": [], "unknown_rank": False}}
    assert signature["outputs"]["b"]["dtype"] == "DT_BOOL"
    assert signature["outputs"]["b"]["tensor_shape"]["dim"] == [{"size": "2", "name": ""}]


@pytest.mark.parametrize(("v2", "tf"), [
    ("BOOL", "DT_BOOL"), ("UINT8", "DT_UINT8"), ("UINT16", "DT_UINT16"),
    ("UINT32", "DT_UINT32"), ("UINT64", "DT_UINT64"), ("INT8", "DT_INT8"),
    ("INT16", "DT_INT16"), ("INT32", "DT_INT32"), ("INT64", "DT_INT64"), ("FP16", "DT_HALF"),
    ("FP32", "DT_FLOAT"), ("FP64", "DT_DOUBLE"), ("BF16", "DT_BFLOAT16"),
    ("BYTES", "DT_STRING"),
])
def test_encode_metadata_dtype_names(v2: str, tf: str) -> None:
    document = encode_metadata(model(spec("t", v2, 1)))
    signature = document["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["t"]["dtype"] == tf
