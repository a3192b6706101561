"""`gateway.codecs.arrays`: JSON values to typed numpy arrays and back."""

from __future__ import annotations

import base64
from typing import Any
from unittest import mock

import ml_dtypes
import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.codecs import arrays, jsonio
from gateway.codecs.arrays import flat_bytes, from_array, nested_shape, to_array
from gateway.dtypes import BY_V2, BYTES
from gateway.errors import BadRequest


def wire(value: Any) -> Any:
    return orjson.loads(jsonio.dumps(value))


# --- to_array: shapes -----------------------------------------------------------------------


@pytest.mark.parametrize(("value", "v2", "expected"), [
    (5, "INT32", 5), (2.5, "FP64", 2.5), (True, "BOOL", True), (-3, "FP32", -3.0),
])
def test_scalar_becomes_zero_dim_array(value: Any, v2: str, expected: Any) -> None:
    array = to_array(value, BY_V2[v2], "x")
    assert array.shape == ()
    assert array.dtype == BY_V2[v2].numpy
    assert array.item() == expected


def test_scalar_string_becomes_zero_dim_bytes() -> None:
    array = to_array("hi", BYTES, "s")
    assert array.shape == () and array.dtype == object
    assert array.item() == b"hi"


@pytest.mark.parametrize("v2", ["FP32", "INT64", "UINT8", "BOOL", "BF16", "BYTES"])
def test_empty_list_is_empty_array_of_the_target_dtype(v2: str) -> None:
    array = to_array([], BY_V2[v2], "x")
    assert array.shape == (0,)
    assert array.dtype == BY_V2[v2].numpy


@pytest.mark.parametrize("v2", ["FP32", "INT32", "BYTES"])
def test_list_of_empty_lists_keeps_its_shape(v2: str) -> None:
    array = to_array([[], [], []], BY_V2[v2], "x")
    assert array.shape == (3, 0)
    assert array.dtype == BY_V2[v2].numpy


def test_nested_lists_keep_their_shape() -> None:
    array = to_array([[[1, 2, 3]], [[4, 5, 6]]], BY_V2["INT16"], "x")
    assert array.shape == (2, 1, 3) and array.dtype == np.int16
    assert array.tolist() == [[[1, 2, 3]], [[4, 5, 6]]]


@pytest.mark.parametrize("value", [[[1, 2], [3]], [[1, 2], 3], [1, [2, 3]], [[[1]], [[1, 2]]]])
def test_ragged_numbers_are_bad_request(value: Any) -> None:
    with pytest.raises(BadRequest, match="'x': ragged nested lists"):
        to_array(value, BY_V2["FP32"], "x")


@pytest.mark.parametrize("value", [[["a", "b"], ["c"]], [["a"], "b"], ["a", ["b"]], [[], ["a"]]])
def test_ragged_strings_are_bad_request(value: Any) -> None:
    with pytest.raises(BadRequest, match="'s': ragged nested lists"):
        to_array(value, BYTES, "s")


# --- to_array: element types ----------------------------------------------------------------


def test_ints_become_floats_for_float_targets() -> None:
    array = to_array([1, 2, 3], BY_V2["FP32"], "x")
    assert array.dtype == np.float32
    assert array.tolist() == [1.0, 2.0, 3.0]


def test_float_values_round_to_the_target_precision() -> None:
    array = to_array([0.1], BY_V2["FP32"], "x")
    assert array[0] == np.float32(0.1)
    assert to_array([0.1], BY_V2["FP64"], "x")[0] == 0.1


def test_bf16_target() -> None:
    array = to_array([[1, 2.5], [-3, 0.1]], BY_V2["BF16"], "x")
    assert array.dtype == ml_dtypes.bfloat16
    assert array.astype(np.float64).tolist() == [[1.0, 2.5], [-3.0, 0.10009765625]]


def test_bool_target_takes_only_booleans() -> None:
    assert to_array([True, False], BY_V2["BOOL"], "b").tolist() == [True, False]
    with pytest.raises(BadRequest, match="'b': expected BOOL \\(booleans\\), got integers"):
        to_array([1, 0], BY_V2["BOOL"], "b")


@pytest.mark.parametrize("v2", ["FP32", "FP16", "FP64", "BF16"])
def test_bool_into_float_is_rejected(v2: str) -> None:
    with pytest.raises(BadRequest, match=f"'x': expected {v2} \\(numbers\\), got booleans"):
        to_array([True, False], BY_V2[v2], "x")


@pytest.mark.parametrize("v2", ["INT8", "INT64", "UINT8", "UINT64"])
def test_bool_into_int_is_rejected(v2: str) -> None:
    with pytest.raises(BadRequest, match="got booleans"):
        to_array([True], BY_V2[v2], "x")


@pytest.mark.parametrize("value", [[1.5], [1.0], [[1, 2], [3, 4.5]], 2.0])
def test_float_into_int_is_rejected(value: Any) -> None:
    with pytest.raises(BadRequest, match="'i': expected INT32 \\(integers\\), got numbers "
                                         "with fractions"):
        to_array(value, BY_V2["INT32"], "i")


@pytest.mark.parametrize(("value", "described"), [
    (["1.0"], "strings"), ("3", "strings"), ([1, "a"], "strings"),
    ([1, None], "mixed values"), (None, "mixed values"), ([{"b64": "AA=="}], "mixed values"),
    ([[1], [{"a": 1}]], "mixed values"),
])
def test_non_numbers_into_float_are_rejected(value: Any, described: str) -> None:
    with pytest.raises(BadRequest, match=f"expected FP32 \\(numbers\\), got {described}"):
        to_array(value, BY_V2["FP32"], "x")


# --- to_array: integer ranges ---------------------------------------------------------------


@pytest.mark.parametrize(("v2", "low", "high"), [
    ("UINT8", 0, 255), ("UINT16", 0, 65535), ("UINT32", 0, 2**32 - 1), ("UINT64", 0, 2**64 - 1),
    ("INT8", -128, 127), ("INT16", -32768, 32767), ("INT32", -(2**31), 2**31 - 1),
    ("INT64", -(2**63), 2**63 - 1),
])
def test_integer_range_edges(v2: str, low: int, high: int) -> None:
    dtype = BY_V2[v2]
    array = to_array([low, high], dtype, "x")
    assert array.dtype == dtype.numpy
    assert array.tolist() == [low, high]
    for outside in (low - 1, high + 1):
        with pytest.raises(BadRequest, match=f"'x': values out of range for {v2}"):
            to_array([low, outside], dtype, "x")
        with pytest.raises(BadRequest, match=f"values out of range for {v2}"):
            to_array(outside, dtype, "x")


def test_300_into_uint8_is_bad_request() -> None:
    with pytest.raises(BadRequest, match="out of range for UINT8"):
        to_array([1, 300], BY_V2["UINT8"], "x")


def test_wide_integers_keep_their_exact_values() -> None:
    # numpy turns [0, 2**64 - 1] into float64 (one int64 and one uint64 value): the ints must
    # still land exactly in a UINT64 tensor.
    array = to_array([[0, 2**64 - 1], [1, 2**63 + 1]], BY_V2["UINT64"], "x")
    assert array.dtype == np.uint64 and array.shape == (2, 2)
    assert array.tolist() == [[0, 2**64 - 1], [1, 2**63 + 1]]


@pytest.mark.parametrize(("value", "v2"), [
    ([-1, 2**63], "INT64"), ([-1, 2**64 - 1], "UINT64"), ([2**64], "UINT64"),
    ([0, 2**70], "INT64"),
])
def test_wide_integers_out_of_range_are_bad_request(value: list[int], v2: str) -> None:
    with pytest.raises(BadRequest, match=f"values out of range for {v2}"):
        to_array(value, BY_V2[v2], "x")


def test_wide_integers_mixed_with_fractions_are_still_rejected_as_fractions() -> None:
    with pytest.raises(BadRequest, match="got numbers with fractions"):
        to_array([0.5, 2**64 - 1], BY_V2["UINT64"], "x")


@pytest.mark.parametrize(("value", "v2"), [
    ([1e39], "FP32"), ([-1e39], "FP32"), ([70000], "FP16"), ([1e300], "BF16"),
    ([1.0, 3.5e38], "FP32"),
])
def test_float_overflow_is_bad_request(value: list[float], v2: str) -> None:
    with pytest.raises(BadRequest, match=f"'x': values out of range for {v2}"):
        to_array(value, BY_V2[v2], "x")


def test_infinity_given_as_infinity_is_kept() -> None:
    array = to_array([float("inf"), float("-inf"), 3.0e38], BY_V2["FP32"], "x")
    assert array.tolist() == [np.inf, -np.inf, np.float32(3.0e38)]


def test_nan_is_kept() -> None:
    assert np.isnan(to_array([float("nan")], BY_V2["FP16"], "x")).all()


# --- to_array: bytes ------------------------------------------------------------------------


def test_strings_encode_as_utf8_bytes() -> None:
    array = to_array([["a", "\u00e9"], ["", "\u2603"]], BYTES, "s")
    assert array.shape == (2, 2)
    assert array.tolist() == [[b"a", b"\xc3\xa9"], [b"", b"\xe2\x98\x83"]]


def test_b64_objects_decode_and_mix_with_strings() -> None:
    raw = bytes(range(256))
    array = to_array([{"b64": base64.b64encode(raw).decode()}, "txt"], BYTES, "s")
    assert array.tolist() == [raw, b"txt"]


@pytest.mark.parametrize("encoded", ["abc", "a b=", "!!!!", "YW=J", "YWJj-_==", "\u00e9AAA"])
def test_invalid_base64_is_bad_request(encoded: str) -> None:
    with pytest.raises(BadRequest, match="'s': invalid base64"):
        to_array([{"b64": encoded}], BYTES, "s")


@pytest.mark.parametrize("value", [[1], [None], [True], [{"b64": 1}], [{"b64": "AA==", "x": 1}],
                                   [{"B64": "AA=="}], 3.5])
def test_non_strings_for_bytes_are_bad_request(value: Any) -> None:
    with pytest.raises(BadRequest, match="'s': expected BYTES"):
        to_array(value, BYTES, "s")


def test_flat_bytes_is_row_major() -> None:
    assert flat_bytes([["a", "b"], ["c", {"b64": "AA=="}]], "s") == [b"a", b"b", b"c", b"\x00"]
    assert flat_bytes("x", "s") == [b"x"]
    assert flat_bytes([], "s") == []


# --- nested_shape ---------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "shape"), [
    (1, ()), ("a", ()), ({"b64": "AA=="}, ()), (None, ()), ([], (0,)), ([[]], (1, 0)),
    ([1, 2, 3], (3,)), ([[1, 2], [3, 4], [5, 6]], (3, 2)), ([[[1]], [[2]]], (2, 1, 1)),
    ([{"b64": "AA=="}, "x"], (2,)), ([[], []], (2, 0)),
])
def test_nested_shape(value: Any, shape: tuple[int, ...]) -> None:
    assert nested_shape(value, "v") == shape


@pytest.mark.parametrize("value", [[[1, 2], [3]], [1, [2]], [[1], 2], [[[1, 2]], [[1]]],
                                   [[], [1]]])
def test_nested_shape_refuses_ragged(value: Any) -> None:
    with pytest.raises(BadRequest, match="'v': ragged"):
        nested_shape(value, "v")


# --- from_array -----------------------------------------------------------------------------


def test_from_array_numeric_stays_an_array_and_serializes_shortest() -> None:
    array = np.array([[0.1, 0.2], [1e-7, 3.0]], np.float32)
    value = from_array(array)
    assert isinstance(value, np.ndarray)
    assert jsonio.dumps(value) == b"[[0.1,0.2],[1e-7,3.0]]"


def test_from_array_non_contiguous() -> None:
    array = np.arange(6, dtype=np.int64).reshape(2, 3)[:, ::2]
    assert wire(from_array(array)) == [[0, 2], [3, 5]]


@pytest.mark.parametrize(("array", "expected"), [
    (np.array(3, np.int64), 3), (np.array(2.5, np.float32), 2.5), (np.array(True), True),
    (np.array(1.5, ml_dtypes.bfloat16), 1.5), (np.array(7, np.uint8), 7),
])
def test_from_array_scalar_is_a_python_value(array: np.ndarray, expected: Any) -> None:
    value = from_array(array)
    assert value == expected
    assert type(value) is type(expected)


def test_from_array_bf16_is_written_as_numbers() -> None:
    array = np.array([1.5, -2.0, 0.1], ml_dtypes.bfloat16)
    assert wire(from_array(array)) == [1.5, -2.0, pytest.approx(0.10009765625, rel=1e-7)]


def test_from_array_bool_and_ints() -> None:
    assert wire(from_array(np.array([[True], [False]]))) == [[True], [False]]
    assert wire(from_array(np.array([2**64 - 1], np.uint64))) == [2**64 - 1]
    assert wire(from_array(np.array([-128], np.int8))) == [-128]


def test_from_array_bytes_as_text() -> None:
    array = np.array([[b"a", b"\xc3\xa9"]], dtype=object)
    assert from_array(array) == [["a", "\u00e9"]]


def test_from_array_invalid_utf8_is_replaced_not_raised() -> None:
    assert from_array(np.array([b"\xff"], dtype=object)) == ["\ufffd"]


def test_from_array_bytes_as_b64() -> None:
    array = np.array([b"\x00\xff", b""], dtype=object)
    assert from_array(array, b64=True) == [{"b64": "AP8="}, {"b64": ""}]


def test_from_array_bytes_scalar() -> None:
    array = np.empty((), dtype=object)
    array[()] = b"\x01"
    assert from_array(array) == "\x01"
    assert from_array(array, b64=True) == {"b64": "AQ=="}


def test_from_array_empty_bytes() -> None:
    assert from_array(np.empty((0,), dtype=object)) == []
    assert from_array(np.empty((2, 0), dtype=object), b64=True) == [[], []]


def test_from_array_text_arrays_are_bytes_like() -> None:
    assert from_array(np.array(["ab", "\u00e9"])) == ["ab", "\u00e9"]
    assert from_array(np.array(["ab"]), b64=True) == [{"b64": "YWI="}]
    assert from_array(np.array([b"ab"], dtype="S2")) == ["ab"]


@pytest.mark.parametrize("v2", ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16",
                                "INT32", "INT64", "FP16", "FP32", "FP64", "BF16"])
def test_to_array_from_array_round_trip(v2: str) -> None:
    values = [[True, False], [False, True]] if v2 == "BOOL" else [[0, 1], [2, 3]]
    array = to_array(values, BY_V2[v2], "x")
    assert wire(from_array(array)) == values


def test_bytes_round_trip_through_b64() -> None:
    raw = [b"\x00", b"\xff\xfe", b"plain"]
    array = to_array([{"b64": base64.b64encode(r).decode()} for r in raw], BYTES, "s")
    assert to_array(from_array(array, b64=True), BYTES, "s").tolist() == raw


# --- to_array: the plain-numbers fast path against the careful path -------------------------

_EDGES = [0.0, -0.0, 0.1, 65504.0, 65505.0, 65520.0, 3.4028234663852886e38, 3.5e38, 1e300,
          2.0**24 - 1, 2.0**24, 2**11 + 1, 2**24 - 1, 2**24, 2**24 + 1, 2**53 - 1, 2**53,
          2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 255, 256, -129, 127,
          float("nan"), float("inf"), float("-inf")]
_LEAVES = {
    "floats": st.floats(width=64) | st.sampled_from([e for e in _EDGES if type(e) is float]),
    "ints": st.integers(-300, 300) | st.integers() | st.sampled_from(
        [e for e in _EDGES if type(e) is int]),
    "bools": st.booleans(),
    # the fast path's usual cases
    "small": st.floats(-1000, 1000) | st.integers(-100, 100),
    "small ints": st.integers(0, 100),
    "small floats": st.floats(-1000, 1000),
}
_LEAVES["numbers"] = _LEAVES["floats"] | _LEAVES["ints"]
_LEAVES["anything"] = _LEAVES["numbers"] | st.booleans() | st.sampled_from(
    [None, "1", {"b64": "AA=="}, [1.0]])


@st.composite
def _json_numbers(draw: st.DrawFn) -> Any:
    """Scalars, lists, lists of rows and of matrices (sometimes ragged) of one family of
    leaves."""
    leaf = _LEAVES[draw(st.sampled_from(sorted(_LEAVES)))]
    form = draw(st.sampled_from(["scalar", "list", "rows", "ragged rows", "matrices"]))
    if form == "scalar":
        return draw(leaf)
    if form == "list":
        return draw(st.lists(leaf, max_size=6))
    width = draw(st.integers(0, 4))
    rows = st.lists(leaf, min_size=width, max_size=width)
    if form == "ragged rows":
        rows = rows | st.lists(leaf, max_size=5) | leaf
    if form == "matrices":
        height = draw(st.integers(1, 3))
        rows = st.lists(rows, min_size=height, max_size=height) | st.lists(rows, max_size=3)
    return draw(st.lists(rows, min_size=1, max_size=4))


# the likeliest first: Hypothesis draws early elements more often
_NUMERIC = ("FP32", "INT64", "FP64", "INT32", "FP16", "BOOL", "UINT8", "INT8", "INT16",
            "UINT16", "UINT32", "UINT64", "BF16")


def _outcome(value: Any, v2: str) -> tuple[Any, ...]:
    try:
        array = to_array(value, BY_V2[v2], "x")
    except BadRequest as exc:
        return "refused", exc.message
    return array.dtype, array.shape, array.tobytes()


@settings(max_examples=2000, deadline=None, derandomize=True, database=None)
@given(_json_numbers(), st.sampled_from(_NUMERIC))
def test_plain_numbers_fast_path_matches_the_careful_path(value: Any, v2: str) -> None:
    fast = _outcome(value, v2)
    with mock.patch.object(arrays, "_PLAIN_MAX_ELEMENTS", -1):  # the careful path only
        careful = _outcome(value, v2)
    assert fast == careful


def test_plain_numbers_take_the_fast_path() -> None:
    assert arrays._plain_numbers([[0.5, -1.25, 2.0, 0.75]], (1, 4), 4, BY_V2["FP32"]) is not None
    assert arrays._plain_numbers([3, 4], (2,), 2, BY_V2["INT64"]) is not None
