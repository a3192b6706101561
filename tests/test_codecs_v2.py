"""Open Inference Protocol (v2) JSON codec: `/infer` request parsing, tensor decoding for
every datatype, and the infer and metadata response documents.

Field names follow the protocol's REST spec (kserve/open-inference-protocol,
inference_rest.md): request `id`, `parameters`, `inputs` (name, shape, datatype, data),
`outputs` (name); response `model_name`, `model_version`, `id`, `outputs`; metadata `name`,
`versions`, `platform`, `inputs`/`outputs` of (name, datatype, shape).
"""

from __future__ import annotations

import math
from typing import Any

import ml_dtypes
import numpy as np
import orjson
import pytest

from gateway.codecs import jsonio
from gateway.codecs.v2_json import (
    V2Request,
    decode_tensor,
    encode_infer,
    encode_metadata,
    encode_tensor,
    parse_infer,
)
from gateway.dtypes import BY_V2
from gateway.errors import BadRequest
from gateway.types import InferResponse, ModelMetadata, TensorSpec


def tensor(name: str = "x", datatype: str = "FP32", shape: list[int] | None = None,
           data: Any = None) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": [2] if shape is None else shape,
            "data": [1, 2] if data is None else data}


def wire(document: Any) -> Any:
    """What a client reads: the document through the gateway's writer and a strict parser."""
    return orjson.loads(jsonio.dumps(document))


# Per datatype: JSON data for shape [2, 2], the numpy dtype it must decode to, and the data a
# client reads back from `encode_tensor` (flattened, row-major).
DATATYPES: list[tuple[str, list[Any], np.dtype, list[Any]]] = [
    ("BOOL", [[True, False], [False, True]], np.dtype(np.bool_), [True, False, False, True]),
    ("UINT8", [[0, 1], [254, 255]], np.dtype(np.uint8), [0, 1, 254, 255]),
    ("UINT16", [[0, 1], [2, 65535]], np.dtype(np.uint16), [0, 1, 2, 65535]),
    ("UINT32", [[0, 1], [2, 2**32 - 1]], np.dtype(np.uint32), [0, 1, 2, 2**32 - 1]),
    ("UINT64", [[0, 1], [2, 2**64 - 1]], np.dtype(np.uint64), [0, 1, 2, 2**64 - 1]),
    ("INT8", [[-128, 0], [1, 127]], np.dtype(np.int8), [-128, 0, 1, 127]),
    ("INT16", [[-32768, 0], [1, 32767]], np.dtype(np.int16), [-32768, 0, 1, 32767]),
    ("INT32", [[-(2**31), 0], [1, 2**31 - 1]], np.dtype(np.int32),
     [-(2**31), 0, 1, 2**31 - 1]),
    ("INT64", [[-(2**63), 0], [1, 2**63 - 1]], np.dtype(np.int64),
     [-(2**63), 0, 1, 2**63 - 1]),
    ("FP16", [[0.5, -1.5], [2, 65504]], np.dtype(np.float16), [0.5, -1.5, 2.0, 65504.0]),
    ("FP32", [[0.1, -2.5], [3, 1e-7]], np.dtype(np.float32), [0.1, -2.5, 3.0, 1e-7]),
    ("FP64", [[0.1, -2.5], [3, 1e300]], np.dtype(np.float64), [0.1, -2.5, 3.0, 1e300]),
    ("BF16", [[0.5, -1.5], [2, 256]], np.dtype(ml_dtypes.bfloat16), [0.5, -1.5, 2.0, 256.0]),
    ("BYTES", [["a", "bc"], ["", "h\u00e9"]], np.dtype(object), ["a", "bc", "", "h\u00e9"]),
]


# --- datatypes ------------------------------------------------------------------------------


@pytest.mark.parametrize(("datatype", "data", "dtype", "flat"), DATATYPES,
                         ids=[d[0] for d in DATATYPES])
def test_every_datatype_decodes_and_round_trips(datatype: str, data: list[Any],
                                                dtype: np.dtype, flat: list[Any]) -> None:
    name, array = decode_tensor(tensor("t", datatype, [2, 2], data), 0)
    assert name == "t"
    assert array.dtype == dtype
    assert array.shape == (2, 2)
    if datatype == "BYTES":
        assert array.tolist() == [[b"a", b"bc"], [b"", "h\u00e9".encode()]]
        assert all(type(v) is bytes for v in array.flat)
    else:
        np.testing.assert_array_equal(array.reshape(-1), np.array(flat, dtype=dtype),
                                      strict=True)
    encoded = wire(encode_tensor("t", array))
    assert encoded == {"name": "t", "datatype": datatype, "shape": [2, 2], "data": flat}


@pytest.mark.parametrize(("datatype", "data", "dtype", "flat"), DATATYPES,
                         ids=[d[0] for d in DATATYPES])
def test_flat_data_is_accepted_for_every_datatype(datatype: str, data: list[Any],
                                                  dtype: np.dtype, flat: list[Any]) -> None:
    flat_data = [v for row in data for v in row]
    _, nested = decode_tensor(tensor("t", datatype, [2, 2], data), 0)
    _, flat_array = decode_tensor(tensor("t", datatype, [2, 2], flat_data), 0)
    assert flat_array.dtype == dtype and flat_array.shape == (2, 2)
    assert flat_array.tolist() == nested.tolist()


def test_bf16_decodes_to_ml_dtypes_bfloat16_with_bf16_rounding() -> None:
    _, array = decode_tensor(tensor("t", "BF16", [1], [0.1]), 0)
    assert array.dtype == ml_dtypes.bfloat16
    assert float(array[0]) == 0.10009765625  # nearest bfloat16 to 0.1
    assert wire(encode_tensor("t", array))["datatype"] == "BF16"


def test_fp32_keeps_float32_precision_and_shortest_output() -> None:
    # 16777217.0, not 16777217: TF Serving refuses the integer for a float (it would lose
    # precision) but rounds the decimal, as we do (test_json_numbers_as_tf_serving_converts_them)
    _, array = decode_tensor(tensor("t", "FP32", [3], [0.1, 1 / 3, 16777217.0]), 0)
    assert array.tolist() == [np.float32(0.1), np.float32(1 / 3), 16777216.0]
    assert jsonio.dumps(encode_tensor("t", array)) == \
        b'{"name":"t","datatype":"FP32","shape":[3],"data":[0.1,0.33333334,16777216.0]}'


def test_encode_tensor_flattens_row_major() -> None:
    array = np.arange(6, dtype=np.int32).reshape(2, 3).T  # non-contiguous view, shape (3, 2)
    assert wire(encode_tensor("o", array)) == {
        "name": "o", "datatype": "INT32", "shape": [3, 2], "data": [0, 3, 1, 4, 2, 5]}


def test_encode_tensor_text_array_is_bytes() -> None:
    # `dtypes.of_array` counts numpy text arrays as BYTES: they must also be writable.
    assert wire(encode_tensor("s", np.array(["ab", "c"]))) == {
        "name": "s", "datatype": "BYTES", "shape": [2], "data": ["ab", "c"]}


def test_encode_tensor_bytes_are_text_not_b64() -> None:
    array = np.array([b"caf\xc3\xa9", b"x"], dtype=object)
    assert wire(encode_tensor("s", array))["data"] == ["caf\u00e9", "x"]


def test_scalar_shape() -> None:
    _, array = decode_tensor(tensor("t", "INT64", [], 5), 0)
    assert array.shape == () and array.dtype == np.int64 and array.item() == 5
    assert wire(encode_tensor("t", array)) == {
        "name": "t", "datatype": "INT64", "shape": [], "data": [5]}


def test_empty_tensor() -> None:
    _, array = decode_tensor(tensor("t", "FP32", [0, 3], []), 0)
    assert array.shape == (0, 3) and array.dtype == np.float32
    assert wire(encode_tensor("t", array)) == {
        "name": "t", "datatype": "FP32", "shape": [0, 3], "data": []}


def test_nested_data_with_other_grouping_but_right_count_is_reshaped() -> None:
    _, array = decode_tensor(tensor("t", "INT32", [3, 2], [[1, 2, 3], [4, 5, 6]]), 0)
    assert array.tolist() == [[1, 2], [3, 4], [5, 6]]


# --- bad tensors ----------------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "data"), [([3], [1, 2]), ([2, 2], [1, 2, 3]), ([], [1, 2]),
                                             ([2], [[1, 2], [3, 4]])])
def test_element_count_not_matching_shape_is_bad_request(shape: list[int], data: Any) -> None:
    with pytest.raises(BadRequest, match=r"'x': shape .* needs"):
        decode_tensor(tensor("x", "FP32", shape, data), 0)


@pytest.mark.parametrize("datatype", ["FLOAT32", "fp32", "STRING", "", None, 7, ["FP32"],
                                      {"a": 1}])
def test_unknown_datatype_is_bad_request(datatype: Any) -> None:
    with pytest.raises(BadRequest, match="'x': unknown datatype"):
        decode_tensor({"name": "x", "datatype": datatype, "shape": [1], "data": [1]}, 0)


def test_missing_datatype_is_bad_request() -> None:
    with pytest.raises(BadRequest, match="unknown datatype None"):
        decode_tensor({"name": "x", "shape": [1], "data": [1]}, 0)


@pytest.mark.parametrize("name", [None, 3, ["x"]])
def test_missing_or_bad_name_is_bad_request(name: Any) -> None:
    document = {"datatype": "FP32", "shape": [1], "data": [1]}
    if name is not None:
        document["name"] = name
    with pytest.raises(BadRequest, match=r"inputs\[4\] must be an object with a 'name'"):
        decode_tensor(document, 4)


def test_tensor_must_be_an_object() -> None:
    with pytest.raises(BadRequest, match=r"inputs\[0\]"):
        decode_tensor([1, 2], 0)


@pytest.mark.parametrize("shape", [None, "2", [-1], [2.0], [True], [2, None], 2])
def test_missing_or_bad_shape_is_bad_request(shape: Any) -> None:
    document: dict[str, Any] = {"name": "x", "datatype": "FP32", "data": [1, 2]}
    if shape is not None:
        document["shape"] = shape
    with pytest.raises(BadRequest, match="'shape' must be a list of non-negative integers"):
        decode_tensor(document, 0)


def test_missing_data_is_bad_request() -> None:
    with pytest.raises(BadRequest, match="'x': missing 'data'"):
        decode_tensor({"name": "x", "datatype": "FP32", "shape": [1]}, 0)


@pytest.mark.parametrize(("datatype", "data", "message"), [
    ("UINT8", [300], "out of range for UINT8"),
    ("INT8", [-129], "out of range for INT8"),
    ("UINT32", [-1], "out of range for UINT32"),
    ("INT64", [2**63], "out of range for INT64"),
    ("INT32", [1.5], "expected INT32"),
    ("BOOL", [1], "expected BOOL"),
    ("FP32", [True], "expected FP32"),
    ("FP32", ["1.0"], "expected FP32"),
    ("FP32", [1e39], "out of range for FP32"),
    ("FP16", [1e5], "out of range for FP16"),
    ("BF16", [1e39], "out of range for BF16"),
    ("BYTES", [1], "expected BYTES"),
    ("FP64", [None], "expected FP64"),
])
def test_values_wrong_for_datatype_are_bad_request(datatype: str, data: list[Any],
                                                   message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        decode_tensor(tensor("x", datatype, [1], data), 0)


def test_ragged_data_is_bad_request() -> None:
    with pytest.raises(BadRequest, match="ragged"):
        decode_tensor(tensor("x", "FP32", [3], [[1, 2], [3]]), 0)


# --- requests -------------------------------------------------------------------------------


def test_parse_spec_example_request() -> None:
    request = parse_infer({
        "id": "42",
        "inputs": [{"name": "input0", "shape": [2, 2], "datatype": "UINT32",
                    "data": [1, 2, 3, 4]},
                   {"name": "input1", "shape": [3], "datatype": "BOOL",
                    "data": [True, False, True]}],
        "outputs": [{"name": "output0"}],
    })
    assert isinstance(request, V2Request)
    assert list(request.inputs) == ["input0", "input1"]
    assert request.inputs["input0"].dtype == np.uint32
    assert request.inputs["input0"].tolist() == [[1, 2], [3, 4]]
    assert request.inputs["input1"].tolist() == [True, False, True]
    assert request.outputs == ("output0",)
    assert request.id == "42"
    assert request.parameters == {}


def test_parameters_and_id_are_kept() -> None:
    parameters = {"priority": 2, "tag": "a", "nested": {"k": [1, 2]}}
    request = parse_infer({"id": "req-1", "parameters": parameters, "inputs": [tensor()]})
    assert request.parameters == parameters
    assert request.id == "req-1"


def test_optional_fields_default() -> None:
    request = parse_infer({"inputs": [tensor()]})
    assert request.outputs is None
    assert request.parameters == {}
    assert request.id is None


def test_null_parameters_mean_none() -> None:
    assert parse_infer({"inputs": [tensor()], "parameters": None}).parameters == {}


def test_requested_outputs_are_parsed_in_order() -> None:
    request = parse_infer({"inputs": [tensor()],
                           "outputs": [{"name": "b"}, {"name": "a", "parameters": {"x": 1}}]})
    assert request.outputs == ("b", "a")


@pytest.mark.parametrize("outputs", [{"name": "a"}, ["a"], [{"name": 1}], [{}], "a"])
def test_bad_requested_outputs_is_bad_request(outputs: Any) -> None:
    with pytest.raises(BadRequest, match="'outputs' must be a list of objects with a 'name'"):
        parse_infer({"inputs": [tensor()], "outputs": outputs})


def test_duplicate_input_names_is_bad_request() -> None:
    with pytest.raises(BadRequest, match="input 'x' appears twice"):
        parse_infer({"inputs": [tensor("x"), tensor("y"), tensor("x")]})


@pytest.mark.parametrize("inputs", [None, [], {"x": tensor()}, "x"])
def test_inputs_must_be_a_non_empty_list(inputs: Any) -> None:
    document = {} if inputs is None else {"inputs": inputs}
    with pytest.raises(BadRequest, match="'inputs' must be a non-empty list"):
        parse_infer(document)


@pytest.mark.parametrize("document", [[], "x", 1, None])
def test_body_must_be_an_object(document: Any) -> None:
    with pytest.raises(BadRequest, match="JSON object"):
        parse_infer(document)


@pytest.mark.parametrize("parameters", [[1], "x", 3])
def test_parameters_must_be_an_object(parameters: Any) -> None:
    with pytest.raises(BadRequest, match="'parameters' must be an object"):
        parse_infer({"inputs": [tensor()], "parameters": parameters})


@pytest.mark.parametrize("request_id", [42, ["a"], {"a": 1}])
def test_id_must_be_a_string(request_id: Any) -> None:
    with pytest.raises(BadRequest, match="'id' must be a string"):
        parse_infer({"inputs": [tensor()], "id": request_id})


def test_error_in_later_input_names_it() -> None:
    with pytest.raises(BadRequest, match="'second'"):
        parse_infer({"inputs": [tensor("first"), tensor("second", "UINT8", [1], [999])]})


def test_nonfinite_input_literals() -> None:
    document = jsonio.loads(b'{"inputs": [{"name": "x", "datatype": "FP64", "shape": [3], '
                            b'"data": [NaN, Infinity, -Infinity]}]}')
    x = parse_infer(document).inputs["x"]
    assert math.isnan(x[0]) and x[1] == math.inf and x[2] == -math.inf


# --- responses ------------------------------------------------------------------------------


def test_encode_infer_with_id() -> None:
    response = InferResponse("mymodel", "3", {
        "output0": np.array([[1.0, 1.1], [2.0, 2.1], [3.0, 3.1]], np.float32),
        "label": np.array([b"a", b"b", b"c"], dtype=object),
    }, id="42")
    assert wire(encode_infer(response)) == {
        "model_name": "mymodel", "model_version": "3", "id": "42",
        "outputs": [
            {"name": "output0", "datatype": "FP32", "shape": [3, 2],
             "data": [1.0, 1.1, 2.0, 2.1, 3.0, 3.1]},
            {"name": "label", "datatype": "BYTES", "shape": [3], "data": ["a", "b", "c"]},
        ]}


def test_encode_infer_without_id_has_no_id_key() -> None:
    document = encode_infer(InferResponse("m", "1", {"y": np.array([True])}))
    assert "id" not in document
    assert wire(document) == {"model_name": "m", "model_version": "1", "outputs": [
        {"name": "y", "datatype": "BOOL", "shape": [1], "data": [True]}]}


def test_encode_infer_keeps_empty_string_id() -> None:
    assert encode_infer(InferResponse("m", "1", {}, id=""))["id"] == ""


def test_encode_infer_nonfinite_outputs() -> None:
    outputs = {"y": np.array([np.nan, np.inf, 0.1], np.float32)}
    assert jsonio.has_nonfinite(outputs)
    body = jsonio.dumps(encode_infer(InferResponse("m", "1", outputs)), nonfinite=True)
    assert body == (b'{"model_name":"m","model_version":"1","outputs":[{"name":"y",'
                    b'"datatype":"FP32","shape":[3],"data":[NaN,Infinity,0.1]}]}')


def test_encode_metadata_layout() -> None:
    metadata = ModelMetadata(
        "mymodel", "2", ("1", "2"), "onnxruntime_onnx",
        (TensorSpec("input0", BY_V2["FP32"], (-1, 4)),
         TensorSpec("text", BY_V2["BYTES"], (-1,))),
        (TensorSpec("output0", BY_V2["BF16"], (-1, 3)),
         TensorSpec("count", BY_V2["INT64"], ())))
    assert wire(encode_metadata(metadata)) == {
        "name": "mymodel",
        "versions": ["1", "2"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "input0", "datatype": "FP32", "shape": [-1, 4]},
                   {"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "output0", "datatype": "BF16", "shape": [-1, 3]},
                    {"name": "count", "datatype": "INT64", "shape": []}],
    }
