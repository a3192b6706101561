"""What one request may make the decoders build: checked against shapes, counts and nesting
a client declares, before memory is allocated for them (docs/security.md lists the defaults)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DecodeBudget:
    max_tensor_elements: int = 4 * 1024 * 1024   # one input tensor
    max_request_elements: int = 8 * 1024 * 1024  # all inputs of one request together
    max_batch_rows: int = 65_536                  # leading dim of a request's batch
    max_dims: int = 32                            # rank of one tensor (numpy's own cap is 64)


DEFAULT_BUDGET = DecodeBudget()
