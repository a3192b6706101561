"""How a mirror's answer is compared with the primary's."""

from __future__ import annotations

import numpy as np

from gateway.policy.compare import Comparison, compare_outputs


def f32(*values: float) -> np.ndarray:
    return np.array(values, np.float32)


def test_equal_outputs_agree() -> None:
    outputs = {"y": f32(1, 2), "s": np.array([b"a"], object)}
    assert compare_outputs(outputs, dict(outputs), 0.0) == Comparison(0.0, None)


def test_differences_within_the_tolerance_agree_beyond_it_disagree() -> None:
    primary, mirror = {"y": f32(1, 2)}, {"y": f32(1, 2.25)}
    assert compare_outputs(primary, mirror, 0.25) == Comparison(0.25, None)
    assert compare_outputs(primary, mirror, 0.2) == Comparison(0.25, "value")


def test_nan_and_infinities() -> None:
    both = {"y": f32(np.nan, np.inf, -np.inf)}
    assert compare_outputs(both, {"y": f32(np.nan, np.inf, -np.inf)}, 0) == Comparison(0, None)
    assert compare_outputs(both, {"y": f32(0, np.inf, -np.inf)}, 1e9) == Comparison(
        np.inf, "value")


def test_shape_dtype_names_and_non_numeric_values() -> None:
    primary = {"y": f32(1, 2)}
    assert compare_outputs(primary, {"y": f32(1, 2, 3)}, 1).disagreement == "shape"
    assert compare_outputs(primary, {"y": np.array([1, 2], np.float64)}, 1).disagreement == (
        "dtype")
    assert compare_outputs(primary, {"z": f32(1, 2)}, 1).disagreement == "outputs"
    assert compare_outputs({"s": np.array([b"a"], object)}, {"s": np.array([b"b"], object)},
                           1) == Comparison(0.0, "value")
    assert compare_outputs({"b": np.array([True])}, {"b": np.array([False])}, 0.5) == (
        Comparison(1.0, "value"))
