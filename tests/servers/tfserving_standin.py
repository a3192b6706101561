"""A TF Serving stand-in: `tensorflow.serving.PredictionService` (Predict, GetModelMetadata) and
`ModelService.GetModelStatus` over grpc.aio on 127.0.0.1, built from our protos.

It answers like TF Serving does, with real numbers: each model version is an ONNX model run by
ONNX Runtime. Versions are picked by `model_spec.version` or `version_label`, the latest
AVAILABLE one otherwise; an unknown model or version is NOT_FOUND, an unknown label, a bad
input alias or dtype INVALID_ARGUMENT. Inputs are decoded as TF's `Tensor::FromProto` does
(`tensor_content`, else the typed `*_val` field padded with its last value), outputs encoded as
TF Serving's default (`*_val` fields) or as `tensor_content`. The signature map is packed in an
`Any` under "signature_def", with input aliases mapped to TensorInfo("x:0", dtype, shape with
-1 for dynamic dims), method "tensorflow/serving/predict", next to the `__saved_model_init_op`
entry real SavedModels carry.

It records every request (a copy, the time left before the caller's deadline, metadata), so a
test can assert exactly what the gateway sent. `pause()` holds calls until `resume()`,
`fail_next()` makes calls fail with a chosen status, `serve()` / `retire()` / `set_label()`
change what is served while it runs. With `tls` it serves over TLS (and mTLS when the
certificate names a client CA).
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NoReturn

import grpc
import ml_dtypes
import numpy as np
import onnxruntime as ort
from google.protobuf import any_pb2, message

from protos.tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from protos.tensorflow.core.protobuf import error_codes_pb2, meta_graph_pb2
from protos.tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from protos.tensorflow_serving.util import status_pb2
from scripts.make_demo_model import BIAS, WEIGHTS
from tests.onnx_models import demo_bytes, multi_io_bytes, scaled_demo_bytes

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
INIT_OP_SIGNATURE = "__saved_model_init_op"

# TF DataType -> numpy dtype, and which typed field carries its values (TF's ProtoHelper).
_NUMPY: dict[int, np.dtype] = {
    types_pb2.DT_FLOAT: np.dtype(np.float32), types_pb2.DT_DOUBLE: np.dtype(np.float64),
    types_pb2.DT_INT8: np.dtype(np.int8), types_pb2.DT_INT16: np.dtype(np.int16),
    types_pb2.DT_INT32: np.dtype(np.int32), types_pb2.DT_INT64: np.dtype(np.int64),
    types_pb2.DT_UINT8: np.dtype(np.uint8), types_pb2.DT_UINT16: np.dtype(np.uint16),
    types_pb2.DT_UINT32: np.dtype(np.uint32), types_pb2.DT_UINT64: np.dtype(np.uint64),
    types_pb2.DT_BOOL: np.dtype(np.bool_), types_pb2.DT_HALF: np.dtype(np.float16),
    types_pb2.DT_BFLOAT16: np.dtype(ml_dtypes.bfloat16), types_pb2.DT_STRING: np.dtype(object),
}
_FIELD = {
    types_pb2.DT_FLOAT: "float_val", types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_INT8: "int_val", types_pb2.DT_INT16: "int_val", types_pb2.DT_INT32: "int_val",
    types_pb2.DT_UINT8: "int_val", types_pb2.DT_UINT16: "int_val",
    types_pb2.DT_INT64: "int64_val", types_pb2.DT_UINT32: "uint32_val",
    types_pb2.DT_UINT64: "uint64_val", types_pb2.DT_BOOL: "bool_val",
    types_pb2.DT_HALF: "half_val", types_pb2.DT_BFLOAT16: "half_val",
    types_pb2.DT_STRING: "string_val",
}
_ONNX: dict[str, int] = {
    "tensor(float)": types_pb2.DT_FLOAT, "tensor(double)": types_pb2.DT_DOUBLE,
    "tensor(int8)": types_pb2.DT_INT8, "tensor(int16)": types_pb2.DT_INT16,
    "tensor(int32)": types_pb2.DT_INT32, "tensor(int64)": types_pb2.DT_INT64,
    "tensor(uint8)": types_pb2.DT_UINT8, "tensor(uint16)": types_pb2.DT_UINT16,
    "tensor(uint32)": types_pb2.DT_UINT32, "tensor(uint64)": types_pb2.DT_UINT64,
    "tensor(bool)": types_pb2.DT_BOOL, "tensor(float16)": types_pb2.DT_HALF,
    "tensor(string)": types_pb2.DT_STRING,
}
_STATE = get_model_status_pb2.ModelVersionStatus.State


def dtype_name(dtype: int) -> str:
    return types_pb2.DataType.Name(dtype)


def decode_tensor(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """A TensorProto as numpy, the way TF reads it; `ValueError` if it is malformed."""
    dtype = _NUMPY.get(proto.dtype)
    if dtype is None:
        raise ValueError(f"unsupported dtype {dtype_name(proto.dtype)}")
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    count = math.prod(shape)
    if proto.dtype != types_pb2.DT_STRING and proto.tensor_content:
        if len(proto.tensor_content) != count * dtype.itemsize:
            raise ValueError(f"tensor_content has {len(proto.tensor_content)} bytes for shape "
                             f"{list(shape)} of {dtype_name(proto.dtype)}")
        return np.frombuffer(proto.tensor_content, dtype=dtype.newbyteorder("<")
                             ).astype(dtype).reshape(shape)
    raw = list(getattr(proto, _FIELD[proto.dtype]))
    if proto.dtype == types_pb2.DT_STRING:
        values = np.empty(len(raw), dtype=object)
        values[:] = raw
    elif _FIELD[proto.dtype] == "half_val":  # 16-bit floats as their bit patterns
        values = np.array(raw, dtype=np.uint16).view(dtype)
    else:
        values = np.array(raw, dtype=dtype)
    if values.size == 0:
        return np.full(shape, b"" if proto.dtype == types_pb2.DT_STRING else 0, dtype=dtype)
    if values.size < count:  # TF repeats the last value to fill the shape
        values = np.concatenate([values, np.full(count - values.size, values[-1], dtype)])
    return values[:count].reshape(shape)


def encode_tensor(array: np.ndarray, *, content: bool) -> tensor_pb2.TensorProto:
    """numpy as a TensorProto: typed `*_val` fields (TF Serving's default) or `tensor_content`."""
    if array.dtype.kind in "OUS":
        dtype = types_pb2.DT_STRING
    else:
        dtype = next(tf for tf, np_dtype in _NUMPY.items() if np_dtype == array.dtype)
    proto = tensor_pb2.TensorProto(dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in array.shape]))
    flat = array.reshape(-1)
    if dtype == types_pb2.DT_STRING:
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in flat)
    elif content:
        proto.tensor_content = flat.astype(array.dtype.newbyteorder("<")).tobytes()
    elif _FIELD[dtype] == "half_val":
        proto.half_val.extend(flat.view(np.uint16).tolist())
    else:
        getattr(proto, _FIELD[dtype]).extend(flat.tolist())
    return proto


@dataclass(frozen=True)
class Received:
    """One call as the stand-in got it."""

    method: str  # "Predict", "GetModelMetadata", "GetModelStatus"
    request: Any  # a copy of the request message
    time_remaining: float | None  # seconds left before the caller's deadline; None: no deadline
    metadata: dict[str, str]
    at: float = field(default_factory=time.monotonic)  # when it arrived


@dataclass(frozen=True)
class StandInTls:
    """The stand-in's certificate and key (PEM files), and the CA client certificates must be
    signed by (mTLS) or None."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None


@dataclass
class _Version:
    number: int
    session: Any  # onnxruntime.InferenceSession; None once retired
    signature: meta_graph_pb2.SignatureDef
    state: str = "AVAILABLE"


@dataclass
class _Model:
    versions: dict[int, _Version] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def _fail(code: grpc.StatusCode, details: str) -> NoReturn:
    raise _Abort(code, details)


def _signature(session: Any) -> meta_graph_pb2.SignatureDef:
    def info(node: Any, tensor_name: str) -> meta_graph_pb2.TensorInfo:
        dims = [tensor_shape_pb2.TensorShapeProto.Dim(size=d if isinstance(d, int) else -1)
                for d in node.shape]
        return meta_graph_pb2.TensorInfo(name=tensor_name, dtype=_ONNX[node.type],
                                         tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=dims))

    signature = meta_graph_pb2.SignatureDef(method_name=PREDICT_METHOD)
    for node in session.get_inputs():
        signature.inputs[node.name].CopyFrom(info(node, f"{node.name}:0"))
    for index, node in enumerate(session.get_outputs()):
        signature.outputs[node.name].CopyFrom(info(node, f"StatefulPartitionedCall:{index}"))
    return signature


def _load(onnx_model: bytes) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(onnx_model, options, providers=["CPUExecutionProvider"])


class TfServingStandIn(prediction_service_pb2_grpc.PredictionServiceServicer,
                       model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, models: Mapping[str, Mapping[int, bytes]],
                 labels: Mapping[str, Mapping[str, int]] | None = None, *,
                 response_encoding: Literal["fields", "content"] = "fields",
                 tls: StandInTls | None = None) -> None:
        """`models`: name -> version -> ONNX model bytes; `labels`: name -> label -> version."""
        self._tls = tls
        self._models: dict[str, _Model] = {}
        for name, versions in models.items():
            for number, onnx_model in versions.items():
                self.serve(name, number, onnx_model)
        for name, named in (labels or {}).items():
            for label, number in named.items():
                self.set_label(name, label, number)
        self._content = response_encoding == "content"
        self.received: list[Received] = []
        self.waiting = 0  # calls held by pause()
        self._gates: dict[str, asyncio.Event] = {}  # method -> released by resume()
        self._failures: dict[str, list[tuple[grpc.StatusCode, str]]] = defaultdict(list)
        self._server: grpc.aio.Server | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    # what a test controls

    def serve(self, name: str, version: int, onnx_model: bytes) -> None:
        session = _load(onnx_model)
        model = self._models.setdefault(name, _Model())
        model.versions[version] = _Version(version, session, _signature(session))

    def retire(self, name: str, version: int) -> None:
        retired = self._models[name].versions[version]
        retired.session, retired.state = None, "END"

    def set_label(self, name: str, label: str, version: int) -> None:
        self._models[name].labels[label] = version

    def calls(self, method: str) -> list[Received]:
        return [r for r in self.received if r.method == method]

    def fail_next(self, method: str, code: grpc.StatusCode, details: str,
                  times: int = 1) -> None:
        """The next `times` calls of `method` fail with `code` (after being recorded)."""
        self._failures[method] += [(code, details)] * times

    def pause(self, method: str = "Predict") -> None:
        """Hold calls of `method` (after recording them) until `resume()`."""
        self._gates.setdefault(method, asyncio.Event())

    def resume(self) -> None:
        for gate in self._gates.values():
            gate.set()
        self._gates.clear()

    async def start(self) -> int:
        self._server = grpc.aio.server()
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(self, self._server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(self, self._server)
        self.port = self._bind(self._server, self.port)
        await self._server.start()
        return self.port

    def _bind(self, server: grpc.aio.Server, port: int) -> int:
        """On `port` (0: a free one; a restart keeps the port it had)."""
        address = f"127.0.0.1:{port}"
        if self._tls is None:
            return server.add_insecure_port(address)
        ca = self._tls.client_ca_file
        credentials = grpc.ssl_server_credentials(
            [(self._tls.key_file.read_bytes(), self._tls.cert_file.read_bytes())],
            root_certificates=ca.read_bytes() if ca is not None else None,
            require_client_auth=ca is not None)
        return server.add_secure_port(address, credentials)

    async def stop(self) -> None:
        self.resume()
        if self._server is not None:
            await self._server.stop(None)
            self._server = None

    # the gRPC methods

    async def Predict(self, request: predict_pb2.PredictRequest,
                      context: grpc.aio.ServicerContext) -> predict_pb2.PredictResponse:
        return await self._answer("Predict", request, context, self._predict)

    async def GetModelMetadata(
            self, request: get_model_metadata_pb2.GetModelMetadataRequest,
            context: grpc.aio.ServicerContext) -> get_model_metadata_pb2.GetModelMetadataResponse:
        return await self._answer("GetModelMetadata", request, context, self._metadata)

    async def GetModelStatus(
            self, request: get_model_status_pb2.GetModelStatusRequest,
            context: grpc.aio.ServicerContext) -> get_model_status_pb2.GetModelStatusResponse:
        return await self._answer("GetModelStatus", request, context, self._status)

    async def _answer(self, method: str, request: message.Message,
                      context: grpc.aio.ServicerContext, handler: Any) -> Any:
        copy = type(request)()
        copy.CopyFrom(request)
        metadata = {k: v for k, v in (context.invocation_metadata() or ())
                    if isinstance(v, str)}
        self.received.append(Received(method, copy, context.time_remaining(), metadata))
        try:
            if self._failures[method]:
                _fail(*self._failures[method].pop(0))
            gate = self._gates.get(method)
            if gate is not None:
                self.waiting += 1
                try:
                    await gate.wait()
                finally:
                    self.waiting -= 1
            return handler(request)
        except _Abort as exc:
            await context.abort(exc.code, exc.details)

    def _resolve(self, spec: model_pb2.ModelSpec) -> _Version:
        model = self._models.get(spec.name)
        if model is None:
            _fail(grpc.StatusCode.NOT_FOUND,
                  f"Servable not found for request: Latest({spec.name})")
        which = spec.WhichOneof("version_choice")
        number: int | None = None
        if which == "version_label":
            if spec.version_label not in model.labels:
                _fail(grpc.StatusCode.INVALID_ARGUMENT,
                      f"Unrecognized servable version label: {spec.version_label}")
            number = model.labels[spec.version_label]
        elif which == "version":
            number = spec.version.value
        serving = {n: v for n, v in model.versions.items() if v.state == "AVAILABLE"}
        if number is None:
            if not serving:
                _fail(grpc.StatusCode.NOT_FOUND,
                      f"Servable not found for request: Latest({spec.name})")
            number = max(serving)
        if number not in serving:
            _fail(grpc.StatusCode.NOT_FOUND,
                  f"Servable not found for request: Specific({spec.name}, {number})")
        return serving[number]

    def _predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        spec = request.model_spec
        version = self._resolve(spec)
        if spec.signature_name not in ("", DEFAULT_SIGNATURE):
            _fail(grpc.StatusCode.INVALID_ARGUMENT,
                  f'Serving signature key "{spec.signature_name}" not found.')
        signature = version.signature
        expected, sent = set(signature.inputs), set(request.inputs)
        if expected != sent:
            _fail(grpc.StatusCode.INVALID_ARGUMENT,
                  f"input size does not match signature: {len(sent)}!={len(expected)} "
                  f"len({_set(sent)}) != len({_set(expected)}). Sent extra: "
                  f"{_set(sent - expected)}. Missing but required: {_set(expected - sent)}.")
        feeds = {}
        for index, (alias, info) in enumerate(sorted(signature.inputs.items())):
            tensor = request.inputs[alias]
            if tensor.dtype != info.dtype:
                _fail(grpc.StatusCode.INVALID_ARGUMENT,
                      f"Expects arg[{index}] to be {dtype_name(info.dtype)} but "
                      f"{dtype_name(tensor.dtype)} is provided")
            try:
                array = decode_tensor(tensor)
                if info.dtype == types_pb2.DT_STRING:  # ONNX Runtime takes text
                    array = np.vectorize(lambda b: b.decode(), otypes=[object])(array) \
                        if array.size else array
            except (ValueError, UnicodeDecodeError) as exc:
                _fail(grpc.StatusCode.INVALID_ARGUMENT, f"input {alias}: {exc}")
            feeds[alias] = array
        wanted = list(request.output_filter) or sorted(signature.outputs)
        for name in wanted:
            if name not in signature.outputs:
                _fail(grpc.StatusCode.INVALID_ARGUMENT,
                      f"output tensor alias not found in signature: {name} Outputs expected "
                      f"to be in the set {_set(set(signature.outputs))}.")
        try:
            values = version.session.run(wanted, feeds)
        except Exception as exc:
            _fail(grpc.StatusCode.INVALID_ARGUMENT, str(exc).strip().splitlines()[0])
        reply = predict_pb2.PredictResponse(model_spec=model_pb2.ModelSpec(
            name=spec.name, signature_name=DEFAULT_SIGNATURE))
        reply.model_spec.version.value = version.number
        for name, value in zip(wanted, values, strict=True):
            reply.outputs[name].CopyFrom(encode_tensor(np.asarray(value), content=self._content))
        return reply

    def _metadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest
                  ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        if not request.metadata_field:
            _fail(grpc.StatusCode.INVALID_ARGUMENT,
                  "GetModelMetadataRequest must specify at least one metadata_field")
        for name in request.metadata_field:
            if name != "signature_def":
                _fail(grpc.StatusCode.INVALID_ARGUMENT,
                      f"Metadata field {name} is not supported")
        version = self._resolve(request.model_spec)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        signatures.signature_def[DEFAULT_SIGNATURE].CopyFrom(version.signature)
        init_op = signatures.signature_def[INIT_OP_SIGNATURE]
        init_op.outputs[INIT_OP_SIGNATURE].CopyFrom(meta_graph_pb2.TensorInfo(
            name="NoOp", tensor_shape=tensor_shape_pb2.TensorShapeProto(unknown_rank=True)))
        packed = any_pb2.Any()
        packed.Pack(signatures)
        reply = get_model_metadata_pb2.GetModelMetadataResponse(
            model_spec=model_pb2.ModelSpec(name=request.model_spec.name))
        reply.model_spec.version.value = version.number
        reply.metadata["signature_def"].CopyFrom(packed)
        return reply

    def _status(self, request: get_model_status_pb2.GetModelStatusRequest
                ) -> get_model_status_pb2.GetModelStatusResponse:
        spec = request.model_spec
        model = self._models.get(spec.name)
        if model is None:
            _fail(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {spec.name}")
        which = spec.WhichOneof("version_choice")
        numbers = sorted(model.versions)
        if which == "version_label":
            if spec.version_label not in model.labels:
                _fail(grpc.StatusCode.INVALID_ARGUMENT,
                      f"Unrecognized servable version label: {spec.version_label}")
            numbers = [model.labels[spec.version_label]]
        elif which == "version":
            if spec.version.value not in model.versions:
                _fail(grpc.StatusCode.NOT_FOUND, f"Could not find version "
                      f"{spec.version.value} of model {spec.name}")
            numbers = [spec.version.value]
        reply = get_model_status_pb2.GetModelStatusResponse()
        for number in numbers:
            reply.model_version_status.append(get_model_status_pb2.ModelVersionStatus(
                version=number, state=_STATE.Value(model.versions[number].state),
                status=status_pb2.StatusProto(error_code=error_codes_pb2.OK)))
        return reply


def max_time_remaining(timeout_s: float) -> float:
    """The most time a server can see left of a caller's `timeout_s`: gRPC rounds timeouts up
    on the wire (to 10 ms steps from 1 s, 100 ms steps from 10 s) and servers read a coarse
    clock."""
    step = 0.001 if timeout_s < 1 else 0.01 if timeout_s < 10 else 0.1
    return timeout_s + step + 0.02


def _set(names: set[str]) -> str:
    return "{" + ",".join(sorted(names)) + "}"


#: What a stand-in serves unless told otherwise: `tfdemo` v1 is the demo classifier, v2 the
#: same signature with different answers (softmax(0.5 x), first three columns), labelled
#: stable and canary; `tfmulti` v1 is the multi-input model (float, int64 and string inputs).
CANARY_SCALE = 0.5


def default_models() -> dict[str, dict[int, bytes]]:
    return {"tfdemo": {1: demo_bytes(), 2: scaled_demo_bytes(CANARY_SCALE)},
            "tfmulti": {1: multi_io_bytes()}}


def _softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


def stable_answer(rows: list[list[float]]) -> np.ndarray:
    """What `tfdemo` v1 (and the gateway's own `demo`) computes, worked out with numpy."""
    return _softmax(np.asarray(rows, np.float32) @ WEIGHTS + BIAS)


def canary_answer(rows: list[list[float]]) -> np.ndarray:
    """What `tfdemo` v2 computes, worked out with numpy."""
    return _softmax(np.asarray(rows, np.float32) * CANARY_SCALE)[:, :3]


#: The `start_standin` fixture: starts one more stand-in (`TfServingStandIn` arguments).
StartStandIn = Callable[..., Awaitable["TfServingStandIn"]]

DEFAULT_LABELS = {"tfdemo": {"stable": 1, "canary": 2}}


def tfserving_config(*endpoints: str, models: tuple[str, ...] = ("tfdemo", "tfmulti"),
                     adapter: str = "tf", connect_timeout_s: float = 1.0,
                     **pool: float | str | bool) -> str:
    """Gateway TOML (to append to a config) routing `models` to a TF Serving adapter; `pool`:
    more keys of its table (adapters/pool_config.py)."""
    lines = [f"[adapters.{adapter}]", 'kind = "tfserving"',
             f"endpoints = {json.dumps(list(endpoints))}",
             f"connect_timeout_s = {connect_timeout_s}",
             *(f"{key} = {json.dumps(value)}" for key, value in pool.items()), ""]
    for model in models:
        lines += [f"[models.{model}]", f'adapter = "{adapter}"', ""]
    return "\n".join(lines)


def dead_address() -> str:
    """A 127.0.0.1 address nothing listens on (a port the OS just handed out and took back)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"
