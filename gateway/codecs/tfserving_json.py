"""TF Serving's REST JSON: `instances` (row) or `inputs` (columnar) in, `predictions` or
`outputs` out, shaped exactly as TF Serving shapes them. The JSON has no dtypes: they come
from the model's signature, which is why decoding waits for it; the decode budget bounds it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.codecs.arrays import from_array, to_array
from gateway.codecs.budget import DEFAULT_BUDGET, DecodeBudget, RequestTally
from gateway.errors import BadRequest
from gateway.types import ModelMetadata, Tensors, TensorSpec, VersionStatus


@dataclass(frozen=True, slots=True)
class PredictBody:
    """A parsed `:predict` body whose tensors are decoded once the signature is known."""

    row_format: bool
    payload: Any
    signature_name: str | None
    budget: DecodeBudget = DEFAULT_BUDGET

    def decode(self, signature: ModelMetadata) -> Tensors:
        """The tensors, each checked against the budget (and all of them against the
        request's) before its array is built."""
        tally = self.budget.request()
        if self.row_format:
            return _decode_instances(self.payload, signature, tally)
        return _decode_columns(self.payload, signature, tally)


def parse_predict(document: Any, *, budget: DecodeBudget = DEFAULT_BUDGET) -> PredictBody:
    if not isinstance(document, dict):
        raise BadRequest("request body must be a JSON object")
    if "instances" in document and "inputs" in document:
        raise BadRequest("request has both 'instances' and 'inputs': send one of them")
    signature_name = document.get("signature_name")
    if signature_name is not None and not isinstance(signature_name, str):
        raise BadRequest("'signature_name' must be a string")
    if "instances" in document:
        instances = document["instances"]
        if not isinstance(instances, list) or not instances:
            raise BadRequest("'instances' must be a non-empty list")
        budget.check_rows(len(instances))
        return PredictBody(True, instances, signature_name, budget)
    if "inputs" in document:
        return PredictBody(False, document["inputs"], signature_name, budget)
    raise BadRequest("request needs 'instances' (row format) or 'inputs' (columnar format)")


def _is_named(value: Any) -> bool:
    return isinstance(value, dict) and set(value) != {"b64"}


def _decode_instances(instances: list[Any], signature: ModelMetadata,
                      tally: RequestTally) -> Tensors:
    tally.budget.check_rows(len(instances))
    if not _is_named(instances[0]):
        spec = _only_input(signature)
        return {spec.name: to_array(instances, spec.dtype, spec.name, tally=tally)}
    names = list(instances[0])
    for index, instance in enumerate(instances):
        if not _is_named(instance) or set(instance) != set(names):
            raise BadRequest(f"instance {index} does not name the same inputs as instance 0 "
                             f"({', '.join(names)})")
    return {name: to_array([i[name] for i in instances], _input(signature, name).dtype, name,
                           tally=tally)
            for name in names}


def _decode_columns(inputs: Any, signature: ModelMetadata, tally: RequestTally) -> Tensors:
    if not _is_named(inputs):
        spec = _only_input(signature)
        return {spec.name: to_array(inputs, spec.dtype, spec.name, tally=tally)}
    return {name: to_array(value, _input(signature, name).dtype, name, tally=tally)
            for name, value in inputs.items()}


def _only_input(signature: ModelMetadata) -> TensorSpec:
    if len(signature.inputs) != 1:
        names = ", ".join(s.name for s in signature.inputs)
        raise BadRequest(f"model {signature.name} has {len(signature.inputs)} inputs ({names}): "
                         "name them in the request")
    return signature.inputs[0]


def _input(signature: ModelMetadata, name: str) -> TensorSpec:
    spec = signature.input(name)
    if spec is None:
        names = ", ".join(s.name for s in signature.inputs)
        raise BadRequest(f"model {signature.name} has no input named {name!r} (inputs: {names})")
    return spec


def encode_predict(outputs: Tensors, *, row_format: bool) -> dict[str, Any]:
    """`predictions` per row (row format) or `outputs` (columnar); one output goes unnamed."""
    json_values = {name: from_array(a, b64=name.endswith("_bytes")) for name, a in outputs.items()}
    if not row_format:
        if len(json_values) == 1:
            return {"outputs": next(iter(json_values.values()))}
        return {"outputs": json_values}
    if len(json_values) == 1:
        return {"predictions": next(iter(json_values.values()))}
    count = _batch_size(outputs)
    return {"predictions": [{name: value[i] for name, value in json_values.items()}
                            for i in range(count)]}


def _batch_size(outputs: Tensors) -> int:
    """The rows of a row-format reply: every output's leading dim, which must agree. TF Serving
    refuses a reply that breaks this with 400 (INVALID_ARGUMENT), the columnar format being
    the request's way out; so do we, in its words."""
    count = -1
    for name, array in outputs.items():
        if not array.ndim:
            raise BadRequest(f"Tensor name: {name} has no shape information (outputs differ "
                             "in batch size, so they cannot be 'predictions' rows; send the "
                             "columnar 'inputs' format)")
        if count >= 0 and array.shape[0] != count:
            raise BadRequest(f"Tensor name: {name} has inconsistent batch size: "
                             f"{array.shape[0]} expecting: {count} (outputs differ in batch "
                             "size, so they cannot be 'predictions' rows; send the columnar "
                             "'inputs' format)")
        count = array.shape[0]
    return count


def encode_status(statuses: list[VersionStatus]) -> dict[str, Any]:
    return {"model_version_status": [
        {"version": s.version, "state": s.state,
         "status": {"error_code": "UNKNOWN" if s.error else "OK", "error_message": s.error}}
        for s in statuses]}


def encode_metadata(metadata: ModelMetadata, signature_name: str = "") -> dict[str, Any]:
    def tensor_map(specs: tuple[TensorSpec, ...]) -> dict[str, Any]:
        return {s.name: {"dtype": s.dtype.tf, "name": s.name, "tensor_shape": {
            "dim": [{"size": str(d), "name": ""} for d in s.shape], "unknown_rank": False}}
            for s in specs}

    return {
        "model_spec": {"name": metadata.name, "signature_name": signature_name,
                       "version": metadata.version},
        "metadata": {"signature_def": {"signature_def": {"serving_default": {
            "inputs": tensor_map(metadata.inputs),
            "outputs": tensor_map(metadata.outputs),
            "method_name": "tensorflow/serving/predict",
        }}}},
    }
