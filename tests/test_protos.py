"""Checks for the gateway-owned protobuf definitions under ``protos/``.

* the checked-in generated code is exactly what the generator produces now;
* field numbers, enum values and method paths equal the upstream TensorFlow,
  TF Serving and KServe/Triton definitions (tables typed in by hand from the
  upstream .proto files, not derived from our own descriptors);
* messages serialize to byte strings built by hand from those numbers, and
  a real gRPC server built from the generated code answers on the upstream
  method paths;
* importing the generated code never imports TensorFlow.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2, json_format, wrappers_pb2
from google.protobuf.message import Message

from protos.inference import grpc_service_pb2 as oip
from protos.inference import grpc_service_pb2_grpc as oip_grpc
from protos.tensorflow.core.example import example_pb2, feature_pb2
from protos.tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from protos.tensorflow.core.protobuf import error_codes_pb2, meta_graph_pb2
from protos.tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    input_pb2,
    model_pb2,
    model_service_pb2,
    predict_pb2,
    prediction_service_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from protos.tensorflow_serving.util import status_pb2

ROOT = Path(__file__).resolve().parent.parent
GENERATOR = ROOT / "scripts" / "generate_protos.py"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


# --------------------------------------------------------------------------
# (a) generated code is up to date
# --------------------------------------------------------------------------


def _generated_tree(base: Path) -> dict[str, bytes]:
    pkg = base / "protos"
    tree: dict[str, bytes] = {}
    for path in pkg.rglob("*"):
        if not path.is_file():
            continue
        is_generated = path.name.endswith(GENERATED_SUFFIXES)
        is_sub_init = path.name == "__init__.py" and path.parent != pkg
        if is_generated or is_sub_init:
            tree[path.relative_to(base).as_posix()] = path.read_bytes()
    return tree


def test_checked_in_generated_code_matches_a_fresh_generation(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(GENERATOR), "--out-dir", str(tmp_path)],
        check=True,
        capture_output=True,
        cwd=tmp_path,  # the generator must not depend on the working directory
    )
    fresh = _generated_tree(tmp_path)
    committed = _generated_tree(ROOT)
    assert len(fresh) > 40, sorted(fresh)
    assert sorted(committed) == sorted(fresh), "generated file set differs"
    stale = [rel for rel in sorted(fresh) if committed[rel] != fresh[rel]]
    assert not stale, (
        f"stale generated files {stale}: run `python scripts/generate_protos.py` "
        "(a different grpcio-tools version also changes the output)"
    )


def test_generator_check_mode_passes_on_checked_in_tree() -> None:
    result = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------
# (b) field numbers / enum values equal upstream
# --------------------------------------------------------------------------

# Hand-copied from upstream .proto files (TensorFlow, TF Serving, KServe v2 /
# Triton grpc_service.proto). Each entry must match the message exactly: a
# renumbered, renamed, missing or extra field fails.
EXPECTED_FIELDS: dict[type[Message], dict[str, int]] = {
    tensor_pb2.TensorProto: {
        "dtype": 1,
        "tensor_shape": 2,
        "version_number": 3,
        "tensor_content": 4,
        "float_val": 5,
        "double_val": 6,
        "int_val": 7,
        "string_val": 8,
        "scomplex_val": 9,
        "int64_val": 10,
        "bool_val": 11,
        "dcomplex_val": 12,
        "half_val": 13,
        "resource_handle_val": 14,
        "variant_val": 15,
        "uint32_val": 16,
        "uint64_val": 17,
        "float8_val": 18,
    },
    tensor_pb2.VariantTensorDataProto: {"type_name": 1, "metadata": 2, "tensors": 3},
    tensor_shape_pb2.TensorShapeProto: {"dim": 2, "unknown_rank": 3},
    tensor_shape_pb2.TensorShapeProto.Dim: {"size": 1, "name": 2},
    meta_graph_pb2.TensorInfo: {
        "name": 1,
        "dtype": 2,
        "tensor_shape": 3,
        "coo_sparse": 4,
        "composite_tensor": 5,
    },
    meta_graph_pb2.TensorInfo.CooSparse: {
        "values_tensor_name": 1,
        "indices_tensor_name": 2,
        "dense_shape_tensor_name": 3,
    },
    meta_graph_pb2.SignatureDef: {
        "inputs": 1,
        "outputs": 2,
        "method_name": 3,
        "defaults": 4,
    },
    feature_pb2.BytesList: {"value": 1},
    feature_pb2.FloatList: {"value": 1},
    feature_pb2.Int64List: {"value": 1},
    feature_pb2.Feature: {"bytes_list": 1, "float_list": 2, "int64_list": 3},
    feature_pb2.Features: {"feature": 1},
    example_pb2.Example: {"features": 1},
    model_pb2.ModelSpec: {
        "name": 1,
        "version": 2,
        "signature_name": 3,
        "version_label": 4,
    },
    predict_pb2.PredictRequest: {
        "model_spec": 1,
        "inputs": 2,
        "output_filter": 3,
        "client_id": 6,
    },
    predict_pb2.PredictResponse: {"outputs": 1, "model_spec": 2},
    get_model_metadata_pb2.SignatureDefMap: {"signature_def": 1},
    get_model_metadata_pb2.GetModelMetadataRequest: {
        "model_spec": 1,
        "metadata_field": 2,
    },
    get_model_metadata_pb2.GetModelMetadataResponse: {"model_spec": 1, "metadata": 2},
    input_pb2.ExampleList: {"examples": 1},
    input_pb2.ExampleListWithContext: {"examples": 1, "context": 2},
    input_pb2.Input: {"example_list": 1, "example_list_with_context": 2},
    classification_pb2.Class: {"label": 1, "score": 2},
    classification_pb2.ClassificationRequest: {"model_spec": 1, "input": 2},
    classification_pb2.ClassificationResponse: {"result": 1, "model_spec": 2},
    regression_pb2.RegressionRequest: {"model_spec": 1, "input": 2},
    regression_pb2.RegressionResponse: {"result": 1, "model_spec": 2},
    inference_pb2.InferenceTask: {"model_spec": 1, "method_name": 2},
    inference_pb2.InferenceResult: {
        "model_spec": 1,
        "classification_result": 2,
        "regression_result": 3,
    },
    get_model_status_pb2.GetModelStatusRequest: {"model_spec": 1},
    get_model_status_pb2.ModelVersionStatus: {"version": 1, "state": 2, "status": 3},
    get_model_status_pb2.GetModelStatusResponse: {"model_version_status": 1},
    status_pb2.StatusProto: {"error_code": 1, "error_message": 2},
    oip.ModelReadyRequest: {"name": 1, "version": 2},
    oip.ServerMetadataResponse: {"name": 1, "version": 2, "extensions": 3},
    oip.ModelMetadataResponse: {
        "name": 1,
        "versions": 2,
        "platform": 3,
        "inputs": 4,
        "outputs": 5,
    },
    oip.ModelMetadataResponse.TensorMetadata: {"name": 1, "datatype": 2, "shape": 3},
    oip.ModelInferRequest: {
        "model_name": 1,
        "model_version": 2,
        "id": 3,
        "parameters": 4,
        "inputs": 5,
        "outputs": 6,
        "raw_input_contents": 7,
    },
    oip.ModelInferRequest.InferInputTensor: {
        "name": 1,
        "datatype": 2,
        "shape": 3,
        "parameters": 4,
        "contents": 5,
    },
    oip.ModelInferRequest.InferRequestedOutputTensor: {"name": 1, "parameters": 2},
    oip.ModelInferResponse: {
        "model_name": 1,
        "model_version": 2,
        "id": 3,
        "parameters": 4,
        "outputs": 5,
        "raw_output_contents": 6,
    },
    oip.ModelInferResponse.InferOutputTensor: {
        "name": 1,
        "datatype": 2,
        "shape": 3,
        "parameters": 4,
        "contents": 5,
    },
    oip.ModelStreamInferResponse: {"error_message": 1, "infer_response": 2},
    oip.InferParameter: {
        "bool_param": 1,
        "int64_param": 2,
        "string_param": 3,
        "double_param": 4,
        "uint64_param": 5,
    },
    oip.InferTensorContents: {
        "bool_contents": 1,
        "int_contents": 2,
        "int64_contents": 3,
        "uint_contents": 4,
        "uint64_contents": 5,
        "fp32_contents": 6,
        "fp64_contents": 7,
        "bytes_contents": 8,
    },
}


@pytest.mark.parametrize(
    "message_class", list(EXPECTED_FIELDS), ids=lambda c: c.DESCRIPTOR.full_name
)
def test_field_numbers_match_upstream(message_class: type[Message]) -> None:
    actual = {f.name: f.number for f in message_class.DESCRIPTOR.fields}
    assert actual == EXPECTED_FIELDS[message_class]


def test_packages_match_upstream() -> None:
    assert tensor_pb2.TensorProto.DESCRIPTOR.full_name == "tensorflow.TensorProto"
    assert example_pb2.Example.DESCRIPTOR.full_name == "tensorflow.Example"
    assert meta_graph_pb2.SignatureDef.DESCRIPTOR.full_name == "tensorflow.SignatureDef"
    assert predict_pb2.PredictRequest.DESCRIPTOR.full_name == "tensorflow.serving.PredictRequest"
    assert status_pb2.StatusProto.DESCRIPTOR.full_name == "tensorflow.serving.StatusProto"
    assert error_codes_pb2.DESCRIPTOR.package == "tensorflow.error"
    assert oip.ModelInferRequest.DESCRIPTOR.full_name == "inference.ModelInferRequest"


def test_oneofs_match_upstream() -> None:
    spec = model_pb2.ModelSpec.DESCRIPTOR.oneofs_by_name["version_choice"]
    assert [f.name for f in spec.fields] == ["version", "version_label"]
    kind = feature_pb2.Feature.DESCRIPTOR.oneofs_by_name["kind"]
    assert {f.name for f in kind.fields} == {"bytes_list", "float_list", "int64_list"}
    encoding = meta_graph_pb2.TensorInfo.DESCRIPTOR.oneofs_by_name["encoding"]
    assert {f.name for f in encoding.fields} == {"name", "coo_sparse", "composite_tensor"}
    param = oip.InferParameter.DESCRIPTOR.oneofs_by_name["parameter_choice"]
    assert len(param.fields) == 5


def test_model_spec_version_is_an_int64_wrapper() -> None:
    field = model_pb2.ModelSpec.DESCRIPTOR.fields_by_name["version"]
    assert field.message_type is wrappers_pb2.Int64Value.DESCRIPTOR


def test_data_type_enum_matches_upstream() -> None:
    names = [
        "DT_INVALID",
        "DT_FLOAT",
        "DT_DOUBLE",
        "DT_INT32",
        "DT_UINT8",
        "DT_INT16",
        "DT_INT8",
        "DT_STRING",
        "DT_COMPLEX64",
        "DT_INT64",
        "DT_BOOL",
        "DT_QINT8",
        "DT_QUINT8",
        "DT_QINT32",
        "DT_BFLOAT16",
        "DT_QINT16",
        "DT_QUINT16",
        "DT_UINT16",
        "DT_COMPLEX128",
        "DT_HALF",
        "DT_RESOURCE",
        "DT_VARIANT",
        "DT_UINT32",
        "DT_UINT64",
        "DT_FLOAT8_E5M2",
        "DT_FLOAT8_E4M3FN",
        "DT_FLOAT8_E4M3FNUZ",
        "DT_FLOAT8_E4M3B11FNUZ",
        "DT_FLOAT8_E5M2FNUZ",
        "DT_INT4",
        "DT_UINT4",
        "DT_INT2",
        "DT_UINT2",
        "DT_FLOAT4_E2M1FN",
    ]
    expected = {name: number for number, name in enumerate(names)}
    expected.update({f"{n}_REF": v + 100 for n, v in expected.items() if v > 0})
    actual = {v.name: v.number for v in types_pb2.DataType.DESCRIPTOR.values}
    assert actual == expected
    # spot checks typed independently of the loop above
    assert types_pb2.DT_FLOAT == 1
    assert types_pb2.DT_STRING == 7
    assert types_pb2.DT_BOOL == 10
    assert types_pb2.DT_BFLOAT16 == 14
    assert types_pb2.DT_HALF == 19
    assert types_pb2.DT_UINT64 == 23
    assert types_pb2.DT_HALF_REF == 119


def test_error_code_enum_matches_upstream() -> None:
    expected = {
        "OK": 0,
        "CANCELLED": 1,
        "UNKNOWN": 2,
        "INVALID_ARGUMENT": 3,
        "DEADLINE_EXCEEDED": 4,
        "NOT_FOUND": 5,
        "ALREADY_EXISTS": 6,
        "PERMISSION_DENIED": 7,
        "RESOURCE_EXHAUSTED": 8,
        "FAILED_PRECONDITION": 9,
        "ABORTED": 10,
        "OUT_OF_RANGE": 11,
        "UNIMPLEMENTED": 12,
        "INTERNAL": 13,
        "UNAVAILABLE": 14,
        "DATA_LOSS": 15,
        "UNAUTHENTICATED": 16,
        "DO_NOT_USE_RESERVED_FOR_FUTURE_EXPANSION_USE_DEFAULT_IN_SWITCH_INSTEAD_": 20,
    }
    actual = {v.name: v.number for v in error_codes_pb2.Code.DESCRIPTOR.values}
    assert actual == expected
    # the error codes mirror gRPC's status codes
    for name, number in expected.items():
        if number <= 16:
            assert grpc.StatusCode[name].value[0] == number


def test_model_version_state_enum_matches_upstream() -> None:
    state = get_model_status_pb2.ModelVersionStatus.State
    assert {v.name: v.number for v in state.DESCRIPTOR.values} == {
        "UNKNOWN": 0,
        "START": 10,
        "LOADING": 20,
        "AVAILABLE": 30,
        "UNLOADING": 40,
        "END": 50,
    }


# --- hand-built encodings -------------------------------------------------

VARINT, I64, LEN, I32 = 0, 1, 2, 5


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int32/int64 are sent as 10-byte two's complement
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def _vint(field: int, value: int) -> bytes:
    return _key(field, VARINT) + _varint(value)


def _ld(field: int, payload: bytes) -> bytes:
    return _key(field, LEN) + _varint(len(payload)) + payload


def _assert_wire(message: Any, expected: bytes) -> None:
    assert message.SerializeToString(deterministic=True) == expected
    assert type(message).FromString(expected) == message


def test_varint_helper() -> None:  # the hand encoder itself must be right
    assert _varint(1) == b"\x01"
    assert _varint(300) == b"\xac\x02"
    assert _varint(-1) == b"\xff" * 9 + b"\x01"


def _model_spec_bytes() -> bytes:
    return _ld(1, b"resnet") + _ld(2, _vint(1, 7)) + _ld(3, b"serving_default")


def _model_spec() -> model_pb2.ModelSpec:
    return model_pb2.ModelSpec(
        name="resnet", version=wrappers_pb2.Int64Value(value=7), signature_name="serving_default"
    )


def test_predict_request_wire_format() -> None:
    content = struct.pack("<2f", 1.5, -2.0)
    tensor = tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[
                tensor_shape_pb2.TensorShapeProto.Dim(size=1),
                tensor_shape_pb2.TensorShapeProto.Dim(size=2),
            ]
        ),
        tensor_content=content,
    )
    request = predict_pb2.PredictRequest(
        model_spec=_model_spec(), inputs={"x": tensor}, output_filter=["y"], client_id=b"c1"
    )
    tensor_bytes = (
        _vint(1, 1)  # dtype = DT_FLOAT
        + _ld(2, _ld(2, _vint(1, 1)) + _ld(2, _vint(1, 2)))  # shape [1, 2]
        + _ld(4, content)
    )
    expected = (
        _ld(1, _model_spec_bytes())
        + _ld(2, _ld(1, b"x") + _ld(2, tensor_bytes))  # map entry: key=1, value=2
        + _ld(3, b"y")
        + _ld(6, b"c1")
    )
    _assert_wire(request, expected)


def test_predict_response_wire_format() -> None:
    response = predict_pb2.PredictResponse(
        outputs={"y": tensor_pb2.TensorProto(dtype=types_pb2.DT_INT64, int64_val=[-1, 5])},
        model_spec=_model_spec(),
    )
    tensor_bytes = _vint(1, 9) + _ld(10, _varint(-1) + _varint(5))
    expected = _ld(1, _ld(1, b"y") + _ld(2, tensor_bytes)) + _ld(2, _model_spec_bytes())
    _assert_wire(response, expected)


def test_model_spec_version_label_wire_format() -> None:
    spec = model_pb2.ModelSpec(name="m", version_label="canary")
    _assert_wire(spec, _ld(1, b"m") + _ld(4, b"canary"))


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"float_val": [1.0, 2.0]}, _ld(5, struct.pack("<2f", 1.0, 2.0))),
        ({"double_val": [0.5]}, _ld(6, struct.pack("<d", 0.5))),
        ({"int_val": [1, -2]}, _ld(7, _varint(1) + _varint(-2))),
        ({"string_val": [b"a", b"bc"]}, _ld(8, b"a") + _ld(8, b"bc")),
        ({"scomplex_val": [1.0, -1.0]}, _ld(9, struct.pack("<2f", 1.0, -1.0))),
        ({"bool_val": [True, False]}, _ld(11, b"\x01\x00")),
        ({"dcomplex_val": [2.0, 3.0]}, _ld(12, struct.pack("<2d", 2.0, 3.0))),
        ({"half_val": [0x3C00]}, _ld(13, _varint(0x3C00))),
        ({"uint32_val": [2**32 - 1]}, _ld(16, _varint(2**32 - 1))),
        ({"uint64_val": [2**64 - 1]}, _ld(17, _varint(2**64 - 1))),
        ({"float8_val": b"\x38\x40"}, _ld(18, b"\x38\x40")),
        ({"version_number": 1}, _vint(3, 1)),
        (
            {"variant_val": [tensor_pb2.VariantTensorDataProto(type_name="t")]},
            _ld(15, _ld(1, b"t")),
        ),
    ],
    ids=lambda v: next(iter(v)) if isinstance(v, dict) else "",
)
def test_tensor_proto_value_fields_wire_format(fields: dict[str, Any], expected: bytes) -> None:
    _assert_wire(tensor_pb2.TensorProto(**fields), expected)


def test_example_wire_format() -> None:
    example = example_pb2.Example(
        features=feature_pb2.Features(
            feature={"age": feature_pb2.Feature(int64_list=feature_pb2.Int64List(value=[29]))}
        )
    )
    feature = _ld(3, _ld(1, _varint(29)))  # int64_list=3 { packed value=1 }
    expected = _ld(1, _ld(1, _ld(1, b"age") + _ld(2, feature)))
    _assert_wire(example, expected)
    request = classification_pb2.ClassificationRequest(
        model_spec=model_pb2.ModelSpec(name="m"),
        input=input_pb2.Input(example_list=input_pb2.ExampleList(examples=[example])),
    )
    _assert_wire(request, _ld(1, _ld(1, b"m")) + _ld(2, _ld(1, _ld(1, expected))))


def test_signature_def_map_packs_into_any_with_upstream_type_url() -> None:
    sig = meta_graph_pb2.SignatureDef(
        inputs={"x": meta_graph_pb2.TensorInfo(name="x:0", dtype=types_pb2.DT_FLOAT)},
        method_name="tensorflow/serving/predict",
    )
    sig_map = get_model_metadata_pb2.SignatureDefMap(signature_def={"serving_default": sig})
    packed = any_pb2.Any()
    packed.Pack(sig_map)
    assert packed.type_url == "type.googleapis.com/tensorflow.serving.SignatureDefMap"
    info = _ld(1, b"x:0") + _vint(2, 1)
    sig_bytes = _ld(1, _ld(1, b"x") + _ld(2, info)) + _ld(3, b"tensorflow/serving/predict")
    assert packed.value == _ld(1, _ld(1, b"serving_default") + _ld(2, sig_bytes))


def test_model_status_json_uses_upstream_snake_case_names() -> None:
    response = get_model_status_pb2.GetModelStatusResponse(
        model_version_status=[
            get_model_status_pb2.ModelVersionStatus(
                version=3,
                state=get_model_status_pb2.ModelVersionStatus.AVAILABLE,
                status=status_pb2.StatusProto(error_code=error_codes_pb2.OK),
            )
        ]
    )
    as_json = json_format.MessageToDict(response, always_print_fields_with_no_presence=True)
    assert as_json == {
        "model_version_status": [
            {
                "version": "3",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }


def test_model_infer_request_wire_format() -> None:
    request = oip.ModelInferRequest(
        model_name="m",
        model_version="1",
        id="req-1",
        parameters={"priority": oip.InferParameter(int64_param=3)},
        inputs=[
            oip.ModelInferRequest.InferInputTensor(
                name="INPUT0",
                datatype="FP32",
                shape=[2],
                contents=oip.InferTensorContents(fp32_contents=[1.0, 2.0]),
            )
        ],
        outputs=[oip.ModelInferRequest.InferRequestedOutputTensor(name="OUTPUT0")],
    )
    tensor = (
        _ld(1, b"INPUT0")
        + _ld(2, b"FP32")
        + _ld(3, _varint(2))  # shape, packed
        + _ld(5, _ld(6, struct.pack("<2f", 1.0, 2.0)))  # contents.fp32_contents
    )
    expected = (
        _ld(1, b"m")
        + _ld(2, b"1")
        + _ld(3, b"req-1")
        + _ld(4, _ld(1, b"priority") + _ld(2, _vint(2, 3)))
        + _ld(5, tensor)
        + _ld(6, _ld(1, b"OUTPUT0"))
    )
    _assert_wire(request, expected)


def test_model_infer_raw_contents_wire_format() -> None:
    request = oip.ModelInferRequest(model_name="m", raw_input_contents=[b"\x00\x01", b""])
    _assert_wire(request, _ld(1, b"m") + _ld(7, b"\x00\x01") + _ld(7, b""))
    response = oip.ModelInferResponse(model_name="m", raw_output_contents=[b"\x02"])
    _assert_wire(response, _ld(1, b"m") + _ld(6, b"\x02"))
    stream = oip.ModelStreamInferResponse(error_message="boom", infer_response=response)
    _assert_wire(stream, _ld(1, b"boom") + _ld(2, _ld(1, b"m") + _ld(6, b"\x02")))


@pytest.mark.parametrize(
    ("parameter", "expected"),
    [
        (oip.InferParameter(bool_param=True), _vint(1, 1)),
        (oip.InferParameter(int64_param=-5), _vint(2, -5)),
        (oip.InferParameter(string_param="s"), _ld(3, b"s")),
        (oip.InferParameter(double_param=0.25), _key(4, I64) + struct.pack("<d", 0.25)),
        (oip.InferParameter(uint64_param=2**63), _vint(5, 2**63)),
    ],
    ids=["bool", "int64", "string", "double", "uint64"],
)
def test_infer_parameter_wire_format(parameter: oip.InferParameter, expected: bytes) -> None:
    _assert_wire(parameter, expected)


def test_infer_tensor_contents_wire_format() -> None:
    contents = oip.InferTensorContents(
        bool_contents=[True],
        int_contents=[-1],
        int64_contents=[2],
        uint_contents=[3],
        uint64_contents=[4],
        fp32_contents=[0.5],
        fp64_contents=[0.25],
        bytes_contents=[b"ab", b""],
    )
    expected = (
        _ld(1, b"\x01")
        + _ld(2, _varint(-1))
        + _ld(3, _varint(2))
        + _ld(4, _varint(3))
        + _ld(5, _varint(4))
        + _ld(6, struct.pack("<f", 0.5))
        + _ld(7, struct.pack("<d", 0.25))
        + _ld(8, b"ab")
        + _ld(8, b"")
    )
    _assert_wire(contents, expected)


# --------------------------------------------------------------------------
# (c) gRPC method paths
# --------------------------------------------------------------------------

# (service, method) -> (request type, response type, client streaming, server streaming)
EXPECTED_METHODS: dict[str, tuple[str, str, bool, bool]] = {
    "/tensorflow.serving.PredictionService/Classify": (
        "tensorflow.serving.ClassificationRequest",
        "tensorflow.serving.ClassificationResponse",
        False,
        False,
    ),
    "/tensorflow.serving.PredictionService/Regress": (
        "tensorflow.serving.RegressionRequest",
        "tensorflow.serving.RegressionResponse",
        False,
        False,
    ),
    "/tensorflow.serving.PredictionService/Predict": (
        "tensorflow.serving.PredictRequest",
        "tensorflow.serving.PredictResponse",
        False,
        False,
    ),
    "/tensorflow.serving.PredictionService/MultiInference": (
        "tensorflow.serving.MultiInferenceRequest",
        "tensorflow.serving.MultiInferenceResponse",
        False,
        False,
    ),
    "/tensorflow.serving.PredictionService/GetModelMetadata": (
        "tensorflow.serving.GetModelMetadataRequest",
        "tensorflow.serving.GetModelMetadataResponse",
        False,
        False,
    ),
    "/tensorflow.serving.ModelService/GetModelStatus": (
        "tensorflow.serving.GetModelStatusRequest",
        "tensorflow.serving.GetModelStatusResponse",
        False,
        False,
    ),
    "/inference.GRPCInferenceService/ServerLive": (
        "inference.ServerLiveRequest",
        "inference.ServerLiveResponse",
        False,
        False,
    ),
    "/inference.GRPCInferenceService/ServerReady": (
        "inference.ServerReadyRequest",
        "inference.ServerReadyResponse",
        False,
        False,
    ),
    "/inference.GRPCInferenceService/ModelReady": (
        "inference.ModelReadyRequest",
        "inference.ModelReadyResponse",
        False,
        False,
    ),
    "/inference.GRPCInferenceService/ServerMetadata": (
        "inference.ServerMetadataRequest",
        "inference.ServerMetadataResponse",
        False,
        False,
    ),
    "/inference.GRPCInferenceService/ModelMetadata": (
        "inference.ModelMetadataRequest",
        "inference.ModelMetadataResponse",
        False,
        False,
    ),
    "/inference.GRPCInferenceService/ModelInfer": (
        "inference.ModelInferRequest",
        "inference.ModelInferResponse",
        False,
        False,
    ),
    "/inference.GRPCInferenceService/ModelStreamInfer": (
        "inference.ModelInferRequest",
        "inference.ModelStreamInferResponse",
        True,
        True,
    ),
}

SERVICES = [
    prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"],
    model_service_pb2.DESCRIPTOR.services_by_name["ModelService"],
    oip.DESCRIPTOR.services_by_name["GRPCInferenceService"],
]


def test_service_descriptors_define_exactly_the_expected_methods() -> None:
    actual = {
        f"/{service.full_name}/{method.name}": (
            method.input_type.full_name,
            method.output_type.full_name,
            method.client_streaming,
            method.server_streaming,
        )
        for service in SERVICES
        for method in service.methods
    }
    assert actual == EXPECTED_METHODS


class _RecordingChannel:
    """Stand-in channel that records the method paths a stub registers."""

    def __init__(self) -> None:
        self.paths: dict[str, str] = {}

    def _record(self, kind: str) -> Any:
        def register(path: str, *args: Any, **kwargs: Any) -> object:
            self.paths[path] = kind
            return object()

        return register

    def __getattr__(self, kind: str) -> Any:
        if kind in {"unary_unary", "unary_stream", "stream_unary", "stream_stream"}:
            return self._record(kind)
        raise AttributeError(kind)


def test_generated_stubs_use_the_upstream_paths() -> None:
    channel = _RecordingChannel()
    prediction_service_pb2_grpc.PredictionServiceStub(channel)
    from protos.tensorflow_serving.apis import model_service_pb2_grpc

    model_service_pb2_grpc.ModelServiceStub(channel)
    oip_grpc.GRPCInferenceServiceStub(channel)
    expected = {
        path: ("stream" if client else "unary") + "_" + ("stream" if server else "unary")
        for path, (_, _, client, server) in EXPECTED_METHODS.items()
    }
    assert channel.paths == expected


class _PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def Predict(
        self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext
    ) -> predict_pb2.PredictResponse:
        return predict_pb2.PredictResponse(
            outputs={k + "_out": v for k, v in request.inputs.items()},
            model_spec=request.model_spec,
        )


class _InferenceServicer(oip_grpc.GRPCInferenceServiceServicer):
    def ModelInfer(
        self, request: oip.ModelInferRequest, context: grpc.ServicerContext
    ) -> oip.ModelInferResponse:
        return oip.ModelInferResponse(
            model_name=request.model_name, id=request.id, raw_output_contents=[b"\x07"]
        )

    def ModelStreamInfer(
        self, request_iterator: Iterator[oip.ModelInferRequest], context: grpc.ServicerContext
    ) -> Iterator[oip.ModelStreamInferResponse]:
        for request in request_iterator:
            yield oip.ModelStreamInferResponse(
                infer_response=oip.ModelInferResponse(model_name=request.model_name, id=request.id)
            )


@pytest.fixture
def channel() -> Iterator[grpc.Channel]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        _PredictionServicer(), server
    )
    oip_grpc.add_GRPCInferenceServiceServicer_to_server(_InferenceServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as chan:
            yield chan
    finally:
        server.stop(grace=None)


def test_server_answers_raw_bytes_on_upstream_predict_path(channel: grpc.Channel) -> None:
    # No generated code on the client side: path string and payload by hand.
    call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
        "/tensorflow.serving.PredictionService/Predict"
    )
    tensor_bytes = _vint(1, 7) + _ld(8, b"hi")  # DT_STRING, string_val
    request = _ld(1, _ld(1, b"m")) + _ld(2, _ld(1, b"x") + _ld(2, tensor_bytes))
    reply = call(request, timeout=10)
    assert reply == _ld(1, _ld(1, b"x_out") + _ld(2, tensor_bytes)) + _ld(2, _ld(1, b"m"))


def test_server_answers_raw_bytes_on_upstream_model_infer_path(channel: grpc.Channel) -> None:
    call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
        "/inference.GRPCInferenceService/ModelInfer"
    )
    reply = call(_ld(1, b"m") + _ld(3, b"r1"), timeout=10)
    assert reply == _ld(1, b"m") + _ld(3, b"r1") + _ld(6, b"\x07")


def test_unimplemented_methods_answer_unimplemented(channel: grpc.Channel) -> None:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    with pytest.raises(grpc.RpcError) as excinfo:
        stub.Classify(classification_pb2.ClassificationRequest(), timeout=10)
    assert excinfo.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_model_stream_infer_is_bidirectional(channel: grpc.Channel) -> None:
    stub = oip_grpc.GRPCInferenceServiceStub(channel)
    requests = [oip.ModelInferRequest(model_name="m", id=str(i)) for i in range(3)]
    replies = list(stub.ModelStreamInfer(iter(requests), timeout=10))
    assert [r.infer_response.id for r in replies] == ["0", "1", "2"]
    assert all(r.error_message == "" for r in replies)


# --------------------------------------------------------------------------
# import isolation
# --------------------------------------------------------------------------


def test_generated_modules_do_not_import_tensorflow() -> None:
    modules = sorted(
        "protos." + p.relative_to(ROOT / "protos").with_suffix("").as_posix().replace("/", ".")
        for p in (ROOT / "protos").rglob("*_pb2*.py")
    )
    assert "protos.tensorflow_serving.apis.prediction_service_pb2_grpc" in modules
    assert "protos.inference.grpc_service_pb2_grpc" in modules
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules"
        " if m == 'tensorflow' or m.startswith(('tensorflow.', 'tensorflow_serving')))\n"
        "assert not bad, bad\n"
        "print(len([m for m in sys.modules if m.startswith('protos.')]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) >= len(modules)
