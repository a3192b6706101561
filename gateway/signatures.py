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
