"""The gRPC codecs: TensorFlow's `TensorProto` (gateway/codecs/tensor_proto.py), TF Serving's
model specs, signatures and statuses (tfserving_grpc.py), and the Open Inference Protocol v2
gRPC messages (v2_grpc.py).

The wire rules follow upstream: TensorProto (tensorflow/core/framework/tensor.proto) carries
numbers little-endian in `tensor_content` or in the typed `*_val` field of the dtype, 16-bit
floats as their bit patterns in `half_val`, and a lone `*_val` value fills the whole shape;
v2 `raw_input_contents` hold little-endian bytes, BYTES elements each prefixed by a 4-byte
little-endian length (Triton's client convention).
"""

from __future__ import annotations

import math
import struct
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from google.protobuf import any_pb2

from gateway.codecs import tensor_proto, tfserving_grpc, v2_grpc
from gateway.dtypes import BY_V2, DType
from gateway.errors import BadRequest, NotFound
from gateway.types import InferResponse, ModelMetadata, ModelRef, TensorSpec, VersionStatus
from protos.inference import grpc_service_pb2 as pb
from protos.tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from protos.tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    predict_pb2,
)

ALL_DTYPES = list(BY_V2.values())


def sample(dtype: DType) -> np.ndarray:
    """A [2, 3] array of `dtype` with its extreme values where it has them."""
    if dtype.is_bytes:
        array = np.empty((2, 3), dtype=object)
        array[:] = [[b"", b"a", "ü".encode()], [b"\x00\xff", b"text", b"x" * 300]]
        return array
    if dtype.numpy.kind in "iu":
        info = np.iinfo(dtype.numpy)
        return np.array([[info.min, 0, 1], [2, info.max - 1, info.max]], dtype=dtype.numpy)
    if dtype.numpy.kind == "b":
        return np.array([[True, False, True], [False, False, True]])
    return np.array([[-1.5, 0.0, 0.25], [3.0, -65504.0, np.inf]], dtype=dtype.numpy)


def proto(dtype: str, shape: list[int], **fields: Any) -> tensor_pb2.TensorProto:
    message = tensor_pb2.TensorProto(
        dtype=types_pb2.DataType.Value(dtype),
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in shape]))
    for name, values in fields.items():
        if name == "tensor_content":
            message.tensor_content = values
        else:
            getattr(message, name).extend(values)
    return message


def same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    if want.dtype == object:
        assert got.tolist() == want.tolist()
    else:  # compare bit patterns: NaN and -0.0 included
        assert got.tobytes() == want.tobytes()


# tensor_proto: numpy <-> TensorProto


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: d.tf)
def test_every_dtype_round_trips_through_a_tensor_proto(dtype: DType) -> None:
    array = sample(dtype)
    message = tensor_proto.from_array(array)
    assert types_pb2.DataType.Name(message.dtype) == dtype.tf
    assert [d.size for d in message.tensor_shape.dim] == [2, 3]
    if dtype.is_bytes:
        assert list(message.string_val) == array.reshape(-1).tolist()
        assert not message.tensor_content
    else:  # numbers as little-endian tensor_content, no typed values
        assert message.tensor_content == array.astype(array.dtype.newbyteorder("<")).tobytes()
        assert not any(len(getattr(message, f)) for f in (
            "float_val", "double_val", "int_val", "int64_val", "bool_val", "half_val",
            "uint32_val", "uint64_val", "string_val"))
    same(tensor_proto.to_array(message, "t"), array)


def test_scalars_and_empty_tensors_round_trip() -> None:
    for array in (np.float32(2.5).reshape(()), np.zeros((0, 4), np.int64)):
        message = tensor_proto.from_array(array)
        same(tensor_proto.to_array(message, "t"), array)


def test_strided_arrays_go_out_in_c_order() -> None:
    array = np.arange(24, dtype=np.float32).reshape(2, 3, 4)[:, ::2, 1:].transpose(2, 0, 1)
    message = tensor_proto.from_array(array)
    assert message.tensor_content == np.ascontiguousarray(array, dtype="<f4").tobytes()
    same(tensor_proto.to_array(message, "t"), array)


def test_a_shape_shared_between_messages_is_copied_not_shared() -> None:
    first = tensor_proto.from_array(np.zeros((2, 3), np.float32))
    first.tensor_shape.dim[0].size = 7  # a caller's change to its own message
    second = tensor_proto.from_array(np.zeros((2, 3), np.float32))
    assert [d.size for d in second.tensor_shape.dim] == [2, 3]


def test_write_array_fills_a_map_entry_in_place() -> None:
    request = predict_pb2.PredictRequest()
    array = np.array([[0.5, -1.25]], np.float32)
    tensor_proto.write_array(request.inputs["x"], array)
    assert request.inputs["x"] == tensor_proto.from_array(array)


@pytest.mark.parametrize("shape", [[], [3], [2, 1, 2], [1] * 15 + [2], [1] * 40 + [2]])
def test_shapes_read_the_same_cached_or_not(shape: list[int]) -> None:
    # short shapes come from a cache of their wire bytes, long ones (past 64 bytes) are read
    array = np.arange(math.prod(shape), dtype=np.float32).reshape(shape)
    message = proto("DT_FLOAT", shape, tensor_content=array.tobytes())
    for _ in range(2):  # the second time from the cache
        same(tensor_proto.to_array(message, "t"), array)


def test_text_arrays_are_sent_as_utf8_string_val() -> None:
    message = tensor_proto.from_array(np.array(["ü", "ab"]))
    assert message.dtype == types_pb2.DT_STRING
    assert list(message.string_val) == ["ü".encode(), b"ab"]


# Per dtype: the typed field TF uses, the values as sent in it, and what they decode to.
TYPED: list[tuple[str, str, list[Any], np.ndarray]] = [
    ("DT_FLOAT", "float_val", [1.5, -2.0], np.float32([1.5, -2.0])),
    ("DT_DOUBLE", "double_val", [0.1, 1e300], np.float64([0.1, 1e300])),
    ("DT_INT32", "int_val", [-(2**31), 2**31 - 1], np.int32([-(2**31), 2**31 - 1])),
    ("DT_INT16", "int_val", [-32768, 32767], np.int16([-32768, 32767])),
    ("DT_INT8", "int_val", [-128, 127], np.int8([-128, 127])),
    ("DT_UINT8", "int_val", [0, 255], np.uint8([0, 255])),
    ("DT_UINT16", "int_val", [0, 65535], np.uint16([0, 65535])),
    ("DT_INT64", "int64_val", [-(2**63), 2**63 - 1], np.int64([-(2**63), 2**63 - 1])),
    ("DT_UINT32", "uint32_val", [0, 2**32 - 1], np.uint32([0, 2**32 - 1])),
    ("DT_UINT64", "uint64_val", [0, 2**64 - 1], np.uint64([0, 2**64 - 1])),
    ("DT_BOOL", "bool_val", [True, False], np.bool_([True, False])),
    ("DT_HALF", "half_val", np.float16([1.5, -65504]).view(np.uint16).tolist(),
     np.float16([1.5, -65504])),
    ("DT_BFLOAT16", "half_val",
     np.array([1.5, -3.0], ml_dtypes.bfloat16).view(np.uint16).tolist(),
     np.array([1.5, -3.0], ml_dtypes.bfloat16)),
]


@pytest.mark.parametrize(("dtype", "field", "values", "want"), TYPED,
                         ids=[case[0] for case in TYPED])
def test_typed_values_are_decoded(dtype: str, field: str, values: list[Any],
                                  want: np.ndarray) -> None:
    same(tensor_proto.to_array(proto(dtype, [2], **{field: values}), "t"), want)


def test_typed_string_values_are_decoded() -> None:
    got = tensor_proto.to_array(proto("DT_STRING", [1, 2], string_val=[b"a", b"\xff"]), "t")
    assert got.dtype == object and got.tolist() == [[b"a", b"\xff"]]


@pytest.mark.parametrize(("dtype", "field", "value", "want"), [
    ("DT_FLOAT", "float_val", 7.0, np.full((2, 3), 7.0, np.float32)),
    ("DT_INT64", "int64_val", -1, np.full((2, 3), -1, np.int64)),
    ("DT_UINT8", "int_val", 9, np.full((2, 3), 9, np.uint8)),
    ("DT_HALF", "half_val", int(np.float16(0.5).view(np.uint16)),
     np.full((2, 3), 0.5, np.float16)),
    ("DT_BFLOAT16", "half_val", int(np.array(2.0, ml_dtypes.bfloat16).view(np.uint16)),
     np.full((2, 3), 2.0, ml_dtypes.bfloat16)),
])
def test_one_typed_value_fills_the_whole_shape(dtype: str, field: str, value: Any,
                                               want: np.ndarray) -> None:
    same(tensor_proto.to_array(proto(dtype, [2, 3], **{field: [value]}), "t"), want)


def test_one_string_fills_the_whole_shape() -> None:
    got = tensor_proto.to_array(proto("DT_STRING", [3], string_val=[b"z"]), "t")
    assert got.tolist() == [b"z", b"z", b"z"]


@pytest.mark.parametrize(("message", "fragment"), [
    (proto("DT_FLOAT", [2, 2], tensor_content=b"\0" * 12),
     "tensor 't': tensor_content has 12 bytes, shape [2, 2] of DT_FLOAT needs 16"),
    (proto("DT_INT64", [3], tensor_content=b"\0" * 8 * 4), "has 32 bytes"),
    (proto("DT_FLOAT", [3], float_val=[1.0, 2.0]), "2 values for shape [3] (3 elements)"),
    (proto("DT_STRING", [3], string_val=[b"a", b"b"]), "2 values for shape [3]"),
    (proto("DT_FLOAT", [2], float_val=[]), "0 values for shape [2]"),
    (proto("DT_FLOAT", [-1, 4], float_val=[1.0]), "shape [-1, 4] has unknown dims"),
    (proto("DT_COMPLEX64", [1], scomplex_val=[1.0, 0.0]), "unsupported dtype DT_COMPLEX64"),
    (tensor_pb2.TensorProto(dtype=999), "unsupported dtype 999"),
    (proto("DT_UINT8", [2], int_val=[1, 256]), "values out of range for DT_UINT8"),
    (proto("DT_INT8", [1], int_val=[-129]), "values out of range for DT_INT8"),
    (proto("DT_UINT16", [1], int_val=[-1]), "values out of range for DT_UINT16"),
])
def test_malformed_tensors_are_bad_requests(message: tensor_pb2.TensorProto,
                                            fragment: str) -> None:
    with pytest.raises(BadRequest) as caught:
        tensor_proto.to_array(message, "t")
    assert fragment in caught.value.message


# tfserving_grpc: model specs, signatures, statuses


@pytest.mark.parametrize(("ref", "choice"), [
    (ModelRef("m"), None),
    (ModelRef("m", version="3"), "version"),
    (ModelRef("m", label="canary"), "version_label"),
])
def test_model_specs_round_trip(ref: ModelRef, choice: str | None) -> None:
    spec = tfserving_grpc.model_spec(ref, "sig")
    assert spec.name == "m" and spec.signature_name == "sig"
    assert spec.WhichOneof("version_choice") == choice
    assert tfserving_grpc.ref_of(spec) == ref


def metadata(version: str = "4") -> ModelMetadata:
    return ModelMetadata(
        name="m", version=version, versions=(version,), platform="tensorflow_serving",
        inputs=(TensorSpec("a", BY_V2["FP32"], (-1, 2)), TensorSpec("s", BY_V2["BYTES"], (-1,))),
        outputs=(TensorSpec("y", BY_V2["INT64"], (-1, 1)),))


def test_signature_round_trips_through_get_model_metadata() -> None:
    response = tfserving_grpc.metadata_response(metadata(), None)
    assert response.model_spec.name == "m" and response.model_spec.version.value == 4
    packed = response.metadata["signature_def"]
    assert packed.type_url.endswith("tensorflow.serving.SignatureDefMap")
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert packed.Unpack(signatures)
    signature = signatures.signature_def["serving_default"]
    assert signature.method_name == "tensorflow/serving/predict"
    assert signature.inputs["s"].dtype == types_pb2.DT_STRING
    assert [d.size for d in signature.inputs["a"].tensor_shape.dim] == [-1, 2]
    assert tfserving_grpc.metadata_from_response(response, None) == metadata()


def test_a_named_signature_is_found_and_a_missing_one_is_not_found() -> None:
    response = tfserving_grpc.metadata_response(metadata(), "scores")
    assert tfserving_grpc.metadata_from_response(response, "scores").inputs == metadata().inputs
    with pytest.raises(NotFound) as caught:
        tfserving_grpc.metadata_from_response(response, None)
    assert "has no signature 'serving_default' (has: scores)" in caught.value.message


def test_a_response_without_signature_def_is_not_found() -> None:
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = "m"
    with pytest.raises(NotFound, match="reported no signature_def"):
        tfserving_grpc.metadata_from_response(response, None)
    response.metadata["signature_def"].CopyFrom(any_pb2.Any(type_url="x/other.Type"))
    with pytest.raises(NotFound, match="reported no signature_def"):
        tfserving_grpc.metadata_from_response(response, None)


def test_an_unknown_rank_reads_as_no_dims() -> None:
    response = tfserving_grpc.metadata_response(metadata(), None)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    info = signatures.signature_def["serving_default"].inputs["a"]
    info.tensor_shape.Clear()
    info.tensor_shape.unknown_rank = True
    response.metadata["signature_def"].Pack(signatures)
    read = tfserving_grpc.metadata_from_response(response, None)
    assert read.input("a") == TensorSpec("a", BY_V2["FP32"], ())


def test_statuses_round_trip_with_errors() -> None:
    statuses = [VersionStatus("1", "END", "failed to load"), VersionStatus("2", "AVAILABLE")]
    response = tfserving_grpc.status_response(statuses)
    first, second = response.model_version_status
    assert first.state == get_model_status_pb2.ModelVersionStatus.END
    assert first.status.error_code != 0 and first.status.error_message == "failed to load"
    assert second.version == 2 and second.status.error_code == 0
    assert tfserving_grpc.statuses_from_response(response) == statuses


# v2_grpc: ModelInferRequest / ModelInferResponse


def raw_of(array: np.ndarray) -> bytes:
    if array.dtype == object:
        return b"".join(struct.pack("<I", len(v)) + v for v in array.reshape(-1))
    return array.astype(array.dtype.newbyteorder("<")).tobytes()


def infer(*inputs: tuple[str, str, list[int]], raw: list[bytes] | None = None
          ) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    for name, datatype, shape in inputs:
        request.inputs.add(name=name, datatype=datatype, shape=shape)
    request.raw_input_contents.extend(raw or [])
    return request


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: d.v2)
def test_every_datatype_decodes_from_raw_input_contents(dtype: DType) -> None:
    array = sample(dtype)
    request = infer(("t", dtype.v2, [2, 3]), raw=[raw_of(array)])
    same(v2_grpc.decode_inputs(request)["t"], array)


# Typed `contents` per datatype (FP16 and BF16 have no contents field).
CONTENTS = [d for d in ALL_DTYPES if d.v2 not in ("FP16", "BF16")]


@pytest.mark.parametrize("dtype", CONTENTS, ids=lambda d: d.v2)
def test_every_datatype_with_a_contents_field_decodes_from_it(dtype: DType) -> None:
    array = sample(dtype)
    request = infer(("t", dtype.v2, [2, 3]))
    field = {"BOOL": "bool_contents", "BYTES": "bytes_contents", "FP32": "fp32_contents",
             "FP64": "fp64_contents", "INT64": "int64_contents",
             "UINT64": "uint64_contents"}.get(
        dtype.v2, "uint_contents" if dtype.v2.startswith("UINT") else "int_contents")
    getattr(request.inputs[0].contents, field).extend(array.reshape(-1).tolist())
    same(v2_grpc.decode_inputs(request)["t"], array)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: d.v2)
def test_every_datatype_is_encoded_as_raw_output_contents(dtype: DType) -> None:
    array = sample(dtype)
    reply = v2_grpc.encode_response(InferResponse("m", "3", {"y": array}, id="r1"))
    assert (reply.model_name, reply.model_version, reply.id) == ("m", "3", "r1")
    [output] = reply.outputs
    assert (output.name, output.datatype, list(output.shape)) == ("y", dtype.v2, [2, 3])
    assert list(reply.raw_output_contents) == [raw_of(array)]


def test_text_outputs_are_length_prefixed_utf8() -> None:
    reply = v2_grpc.encode_response(InferResponse("m", "1", {"y": np.array(["ü", ""])}))
    assert reply.outputs[0].datatype == "BYTES"
    assert reply.raw_output_contents[0] == b"\x02\x00\x00\x00\xc3\xbc\x00\x00\x00\x00"


def test_raw_bytes_with_empty_elements_and_zero_elements() -> None:
    request = infer(("s", "BYTES", [3]), ("e", "BYTES", [0]),
                    raw=[b"\0\0\0\0\x01\0\0\0a\0\0\0\0", b""])
    inputs = v2_grpc.decode_inputs(request)
    assert inputs["s"].tolist() == [b"", b"a", b""]
    assert inputs["e"].shape == (0,)


@pytest.mark.parametrize(("request_", "fragment"), [
    (infer(("s", "BYTES", [1]), raw=[b"\x05\0"]), "input 's': truncated BYTES length prefix"),
    (infer(("s", "BYTES", [1]), raw=[b"\x01\0\0\0ab"]), "truncated BYTES length prefix"),
    (infer(("s", "BYTES", [2]), raw=[b"\x01\0\0\0a\x05\0\0\0ab"]),
     "input 's': BYTES element 1 has length 5, only 2 bytes follow"),
    (infer(("s", "BYTES", [3]), raw=[b"\x01\0\0\0a\x01\0\0\0b"]),
     "raw BYTES hold 2 elements, shape [3] needs 3"),
    (infer(("x", "FP32", [2]), raw=[b"\0" * 7]), "7 raw bytes, shape [2] of FP32 needs 8"),
    (infer(("x", "FP32", [1]), ("y", "FP32", [1]), raw=[b"\0" * 4]),
     "1 raw_input_contents for 2 inputs"),
    (infer(("x", "FP8", [1])), "unknown datatype 'FP8'"),
    (infer(("x", "FP32", [-1, 2])), "negative dim in shape [-1, 2]"),
    (infer(("x", "FP16", [1])), "FP16 travels only in raw_input_contents"),
    (infer(("x", "FP32", [0]), ("x", "FP32", [0])), "input 'x' appears twice"),
    (infer(("x", "FP32", [3])), "0 values in contents, shape [3] needs 3"),
])
def test_malformed_infer_requests_are_bad_requests(request_: pb.ModelInferRequest,
                                                   fragment: str) -> None:
    with pytest.raises(BadRequest) as caught:
        v2_grpc.decode_inputs(request_)
    assert fragment in caught.value.message


@pytest.mark.parametrize(("datatype", "field", "value"), [
    ("UINT8", "uint_contents", 256), ("UINT16", "uint_contents", 70000),
    ("INT8", "int_contents", 128), ("INT16", "int_contents", -40000),
])
def test_contents_out_of_range_are_refused_not_wrapped(datatype: str, field: str,
                                                       value: int) -> None:
    request = infer(("x", datatype, [1]))
    getattr(request.inputs[0].contents, field).append(value)
    with pytest.raises(BadRequest) as caught:
        v2_grpc.decode_inputs(request)
    assert f"input 'x': values out of range for {datatype}" in caught.value.message


def test_model_metadata_response() -> None:
    reply = v2_grpc.metadata_response(metadata("2"))
    assert (reply.name, list(reply.versions), reply.platform) == \
        ("m", ["2"], "tensorflow_serving")
    assert [(t.name, t.datatype, list(t.shape)) for t in reply.inputs] == \
        [("a", "FP32", [-1, 2]), ("s", "BYTES", [-1])]
    assert [(t.name, t.datatype, list(t.shape)) for t in reply.outputs] == \
        [("y", "INT64", [-1, 1])]
