"""TF Serving's gRPC messages (signatures, model specs, statuses) to and from internal types."""

from __future__ import annotations

from google.protobuf import any_pb2

from gateway.codecs.tensor_proto import dtype_of, shape_proto
from gateway.errors import NotFound
from gateway.types import ModelMetadata, ModelRef, TensorSpec, VersionStatus
from protos.tensorflow.core.framework import types_pb2
from protos.tensorflow.core.protobuf import error_codes_pb2, meta_graph_pb2
from protos.tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_pb2
from protos.tensorflow_serving.util import status_pb2

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
_STATE_NAMES = get_model_status_pb2.ModelVersionStatus.State


def model_spec(ref: ModelRef, signature_name: str | None = None) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=ref.model, signature_name=signature_name or "")
    if ref.version is not None:
        spec.version.value = int(ref.version)
    elif ref.label is not None:
        spec.version_label = ref.label
    return spec


def ref_of(spec: model_pb2.ModelSpec) -> ModelRef:
    which = spec.WhichOneof("version_choice")
    if which == "version":
        return ModelRef(spec.name, version=str(spec.version.value))
    if which == "version_label":
        return ModelRef(spec.name, label=spec.version_label)
    return ModelRef(spec.name)


def metadata_from_response(response: get_model_metadata_pb2.GetModelMetadataResponse,
                           signature_name: str | None) -> ModelMetadata:
    """The signature a backend reported, as a `ModelMetadata` (inputs keyed by alias)."""
    signatures = get_model_metadata_pb2.SignatureDefMap()
    if "signature_def" not in response.metadata or not response.metadata[
            "signature_def"].Unpack(signatures):
        raise NotFound(f"model {response.model_spec.name!r} reported no signature_def")
    wanted = signature_name or DEFAULT_SIGNATURE
    if wanted not in signatures.signature_def:
        raise NotFound(f"model {response.model_spec.name!r} has no signature {wanted!r} "
                       f"(has: {', '.join(sorted(signatures.signature_def))})")
    signature = signatures.signature_def[wanted]
    version = str(response.model_spec.version.value)
    return ModelMetadata(
        name=response.model_spec.name, version=version, versions=(version,),
        platform="tensorflow_serving",
        inputs=_specs(signature.inputs), outputs=_specs(signature.outputs))


def _specs(infos: object) -> tuple[TensorSpec, ...]:
    return tuple(
        TensorSpec(alias, dtype_of(info.dtype, alias),
                   () if info.tensor_shape.unknown_rank
                   else tuple(d.size for d in info.tensor_shape.dim))
        for alias, info in sorted(infos.items()))  # type: ignore[attr-defined]


def metadata_response(metadata: ModelMetadata, signature_name: str | None
                      ) -> get_model_metadata_pb2.GetModelMetadataResponse:
    signature = meta_graph_pb2.SignatureDef(method_name=PREDICT_METHOD)
    for target, specs in ((signature.inputs, metadata.inputs),
                          (signature.outputs, metadata.outputs)):
        for spec in specs:
            target[spec.name].CopyFrom(meta_graph_pb2.TensorInfo(
                name=spec.name, dtype=types_pb2.DataType.Value(spec.dtype.tf),
                tensor_shape=shape_proto(spec.shape)))
    signatures = get_model_metadata_pb2.SignatureDefMap()
    signatures.signature_def[signature_name or DEFAULT_SIGNATURE].CopyFrom(signature)
    packed = any_pb2.Any()
    packed.Pack(signatures)
    response = get_model_metadata_pb2.GetModelMetadataResponse(
        model_spec=model_pb2.ModelSpec(name=metadata.name,
                                       signature_name=signature_name or ""))
    if metadata.version.isdigit():  # other backends' may be free text, or unknown ("")
        response.model_spec.version.value = int(metadata.version)
    response.metadata["signature_def"].CopyFrom(packed)
    return response


def statuses_from_response(response: get_model_status_pb2.GetModelStatusResponse
                           ) -> list[VersionStatus]:
    return [VersionStatus(str(s.version), _STATE_NAMES.Name(s.state),
                          s.status.error_message) for s in response.model_version_status]


def status_response(statuses: list[VersionStatus]) -> get_model_status_pb2.GetModelStatusResponse:
    response = get_model_status_pb2.GetModelStatusResponse()
    for status in statuses:
        response.model_version_status.append(get_model_status_pb2.ModelVersionStatus(
            version=int(status.version) if status.version.isdigit() else 0,
            state=_STATE_NAMES.Value(status.state),
            status=status_pb2.StatusProto(
                error_code=error_codes_pb2.UNKNOWN if status.error else error_codes_pb2.OK,
                error_message=status.error)))
    return response
