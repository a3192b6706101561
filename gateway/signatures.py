"""Checking a request's tensors against a model's signature, with errors that say what differs."""

from __future__ import annotations

from gateway import dtypes
from gateway.errors import BadRequest
from gateway.types import ModelMetadata, Tensors


def check_inputs(signature: ModelMetadata, inputs: Tensors) -> None:
    """Raise `BadRequest` naming the input, what the model expects and what came."""
    names = {spec.name for spec in signature.inputs}
    unknown = sorted(set(inputs) - names)
    if unknown:
        raise BadRequest(f"model {signature.name} has no input named {unknown[0]!r} "
                         f"(inputs: {', '.join(sorted(names))})")
    for spec in signature.inputs:
        array = inputs.get(spec.name)
        if array is None:
            raise BadRequest(f"missing input {spec.name!r} ({spec.dtype.v2} "
                             f"{list(spec.shape)}) for model {signature.name}")
        got = dtypes.of_array(array)
        if got is not spec.dtype:
            raise BadRequest(f"input {spec.name!r}: expected datatype {spec.dtype.v2}, "
                             f"got {got.v2}")
        if not shape_matches(spec.shape, array.shape):
            raise BadRequest(f"input {spec.name!r}: expected shape {list(spec.shape)}, "
                             f"got {list(array.shape)}")
    check_batch(signature, inputs)


def check_batch(signature: ModelMetadata, inputs: Tensors) -> None:
    """Inputs whose leading dim is the model's batch dim (-1) must agree on it: a request is
    one batch, and the batcher merges and splits requests by it."""
    rows = {spec.name: inputs[spec.name].shape[0] for spec in signature.inputs
            if spec.shape and spec.shape[0] < 0}
    if len(set(rows.values())) > 1:
        described = ", ".join(f"{name!r} has {count}" for name, count in sorted(rows.items()))
        raise BadRequest(f"inputs differ in batch size ({described}); every input of a "
                         "request must have the same number of rows")


def check_outputs(signature: ModelMetadata, requested: tuple[str, ...] | None) -> None:
    if not requested:
        return
    names = {spec.name for spec in signature.outputs}
    for name in requested:
        if name not in names:
            raise BadRequest(f"model {signature.name} has no output named {name!r} "
                             f"(outputs: {', '.join(sorted(names))})")


def shape_matches(expected: tuple[int, ...], got: tuple[int, ...]) -> bool:
    return len(expected) == len(got) and all(e < 0 or e == g for e, g in zip(expected, got,
                                                                             strict=True))
