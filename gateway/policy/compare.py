"""How far a mirror's answer is from the primary's: the largest absolute difference of numeric
outputs, and the first reason they disagree (names, dtype, shape, or values beyond a
tolerance)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gateway.types import Tensors

_NUMERIC = "biufc"


@dataclass(frozen=True, slots=True)
class Comparison:
    max_abs_difference: float  # over the numeric outputs both returned alike; 0 if none
    disagreement: str | None  # "outputs", "dtype", "shape", "value"; None when they agree


def compare_outputs(primary: Tensors, mirror: Tensors, tolerance: float) -> Comparison:
    reason = "outputs" if set(primary) != set(mirror) else None
    largest = 0.0
    for name in sorted(set(primary) & set(mirror)):
        a, b = primary[name], mirror[name]
        if a.dtype != b.dtype:
            reason = reason or "dtype"
        elif a.shape != b.shape:
            reason = reason or "shape"
        elif a.dtype.kind in _NUMERIC:
            difference = _max_abs_difference(a, b)
            largest = max(largest, difference)
            if difference > tolerance:
                reason = reason or "value"
        elif not np.array_equal(a, b):
            reason = reason or "value"
    return Comparison(largest, reason)


def _max_abs_difference(a: np.ndarray, b: np.ndarray) -> float:
    """Equal values (infinities, NaN against NaN) differ by 0; NaN against a number by inf."""
    if a.size == 0:
        return 0.0
    wide = np.complex128 if a.dtype.kind == "c" else np.float64  # bool as 0/1
    x, y = a.astype(wide), b.astype(wide)
    with np.errstate(invalid="ignore", over="ignore"):
        difference = np.where((x == y) | (np.isnan(x) & np.isnan(y)), 0.0, np.abs(x - y))
    return float(np.nan_to_num(difference, nan=np.inf).max())
