"""The gateway's requests as Open Inference Protocol v2 gRPC messages, and the server's model
metadata as ours. Tensors travel as `raw_input_contents` (the bytes numpy already holds, no
per-element work); replies are read by `gateway.codecs.v2_grpc.decode_outputs`."""

from __future__ import annotations

from typing import Any

from gateway import dtypes
from gateway.codecs import v2_binary
from gateway.errors import BackendError, BadRequest
from gateway.types import InferRequest, ModelMetadata, TensorSpec
from protos.inference import grpc_service_pb2 as pb

_INT64 = range(-(2 ** 63), 2 ** 63)
_UINT64 = range(2 ** 64)


def infer_request(request: InferRequest, version: str) -> pb.ModelInferRequest:
    proto = pb.ModelInferRequest(model_name=request.ref.model, model_version=version,
                                 id=request.id or "")
    for name, array in request.inputs.items():
        dtype = dtypes.of_array(array)
        proto.inputs.add(name=name, datatype=dtype.v2, shape=array.shape)
        proto.raw_input_contents.append(v2_binary.to_raw(array, dtype))
    for name in request.outputs or ():
        proto.outputs.add(name=name)
    for key, value in request.parameters.items():
        _set_parameter(proto.parameters[key], key, value)
    return proto


def _set_parameter(parameter: pb.InferParameter, key: str, value: Any) -> None:
    """A request parameter in the typed field its JSON or gRPC value fits."""
    if isinstance(value, bool):  # before int: a bool is an int
        parameter.bool_param = value
    elif isinstance(value, int) and value in _INT64:
        parameter.int64_param = value
    elif isinstance(value, int) and value in _UINT64:
        parameter.uint64_param = value
    elif isinstance(value, float):
        parameter.double_param = value
    elif isinstance(value, str):
        parameter.string_param = value
    else:
        raise BadRequest(f"parameter {key!r}: a v2 backend takes booleans, 64-bit integers, "
                         f"numbers and strings, got {type(value).__name__}")


def metadata(reply: pb.ModelMetadataResponse, version: str) -> ModelMetadata:
    """The server's answer for the version asked for (`version`), or for its default one: the
    highest it lists, as Triton serves it (MLServer lists none: then "")."""
    versions = tuple(reply.versions)
    numbered = [int(v) for v in versions if v.isdigit()]
    served = version or (str(max(numbered)) if numbered else "")
    return ModelMetadata(name=reply.name, version=served, versions=versions,
                         platform=reply.platform, inputs=_specs(reply.inputs, reply.name),
                         outputs=_specs(reply.outputs, reply.name))


def _specs(tensors: Any, model: str) -> tuple[TensorSpec, ...]:
    specs = []
    for tensor in tensors:
        dtype = dtypes.BY_V2.get(tensor.datatype)
        if dtype is None:
            raise BackendError(f"model {model!r}: tensor {tensor.name!r} has a datatype the "
                               f"gateway does not know ({tensor.datatype!r})")
        specs.append(TensorSpec(tensor.name, dtype, tuple(tensor.shape)))
    return tuple(specs)

