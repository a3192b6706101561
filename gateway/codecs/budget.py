"""What one request may make the decoders build: checked against shapes, counts and nesting
a client declares, before memory is allocated for them (docs/security.md lists the defaults)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.errors import BadRequest, PayloadTooLarge

_SECTION = "[server.decode]"


@dataclass(frozen=True, slots=True)
class DecodeBudget:
    max_tensor_elements: int = 4 * 1024 * 1024   # one input tensor
    max_request_elements: int = 8 * 1024 * 1024  # all inputs of one request together
    max_batch_rows: int = 65_536                  # leading dim of a request's batch
    max_dims: int = 32                            # rank of one tensor (numpy's own cap is 64)
    # BYTES elements of one request: each becomes a Python object (~40-50 bytes beside its
    # data), so their cap is lower than the numeric ones' (~12 MB at the default).
    max_bytes_elements: int = 256 * 1024

    def check_text(self, name: str, count: int) -> None:
        if count > self.max_bytes_elements:
            raise PayloadTooLarge(
                f"BYTES tensors of the request have {count} elements (counting {name!r}); the "
                f"limit is {self.max_bytes_elements} ({_SECTION} max_bytes_elements)")

    def check_rank(self, name: str, rank: int) -> None:
        if rank > self.max_dims:
            raise BadRequest(f"tensor {name!r} has {rank} dimensions; the limit is "
                             f"{self.max_dims} ({_SECTION} max_dims)")

    def check_nesting(self, name: str, depth: int) -> None:
        """Lists nested deeper than a tensor may have dimensions, refused before recursing."""
        if depth > self.max_dims:
            raise BadRequest(f"tensor {name!r} is nested more than {self.max_dims} lists deep; "
                             f"the limit is {self.max_dims} dimensions ({_SECTION} max_dims)")

    def check_shape(self, name: str, shape: Sequence[int], *, batch: bool = True) -> int:
        """The element count of a client-declared shape; refuses a shape over budget before
        anything is allocated (Python ints: no overflow, however large the dims). `batch`:
        the leading dim is the tensor's rows (not when the shape is only how its data is
        grouped, as v2's flat `data`)."""
        self.check_rank(name, len(shape))
        if shape and min(shape) < 0:
            raise BadRequest(f"tensor {name!r}: shape {list(shape)} has a negative dim")
        count = math.prod(shape)
        if count > self.max_tensor_elements:
            raise PayloadTooLarge(
                f"tensor {name!r} has {'x'.join(map(str, shape))} = {count} elements; the "
                f"limit is {self.max_tensor_elements} ({_SECTION} max_tensor_elements)")
        if count == 0 and shape and max(shape) > self.max_tensor_elements:
            # no elements, but a dim no tensor within budget has (numpy cannot even hold 2**63)
            raise PayloadTooLarge(
                f"tensor {name!r} has a dim of {max(shape)}; the limit is "
                f"{self.max_tensor_elements} ({_SECTION} max_tensor_elements)")
        if batch and shape and shape[0] > self.max_batch_rows:
            raise PayloadTooLarge(
                f"tensor {name!r} has {shape[0]} rows; the limit is {self.max_batch_rows} "
                f"({_SECTION} max_batch_rows)")
        return count

    def check_rows(self, rows: int) -> None:
        """Rows a request declares before its tensors are built (TF Serving's `instances`)."""
        if rows > self.max_batch_rows:
            raise PayloadTooLarge(f"the request has {rows} rows; the limit is "
                                  f"{self.max_batch_rows} ({_SECTION} max_batch_rows)")

    def request(self) -> RequestTally:
        """A tally of one request's tensors against the request-wide limit."""
        return RequestTally(self)


class RequestTally:
    """One request's tensors so far: each within the tensor budget, all within the request's."""

    __slots__ = ("budget", "elements", "text_elements")

    def __init__(self, budget: DecodeBudget) -> None:
        self.budget = budget
        self.elements = 0
        self.text_elements = 0

    def add(self, name: str, shape: Sequence[int], *, text: bool = False) -> int:
        """`text`: a BYTES tensor, also counted against `max_bytes_elements`."""
        count = self.budget.check_shape(name, shape)
        if text:
            self.text_elements += count
            self.budget.check_text(name, self.text_elements)
        self.elements += count
        if self.elements > self.budget.max_request_elements:
            raise PayloadTooLarge(
                f"the request's tensors have {self.elements} elements together (counting "
                f"{name!r}); the limit is {self.budget.max_request_elements} "
                f"({_SECTION} max_request_elements)")
        return count


DEFAULT_BUDGET = DecodeBudget()
