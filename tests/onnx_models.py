"""Small ONNX models the tests build on the fly (the demo model comes from its own script)."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from scripts.make_demo_model import demo_model


def _serialize(graph: object) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def demo_bytes() -> bytes:
    return demo_model().SerializeToString()


def scaled_demo_bytes(scale: float) -> bytes:
    """Same signature as the demo, different answers: tells versions apart."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "k"], ["scaled"]),
         helper.make_node("Softmax", ["scaled"], ["probabilities"], axis=-1),
         helper.make_node("Slice", ["probabilities", "starts", "ends", "axes"], ["cut"])],
        "scaled", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("cut", TensorProto.FLOAT, [None, 3])],
        [numpy_helper.from_array(np.array(scale, np.float32), "k"),
         numpy_helper.from_array(np.array([0], np.int64), "starts"),
         numpy_helper.from_array(np.array([3], np.int64), "ends"),
         numpy_helper.from_array(np.array([1], np.int64), "axes")])
    return _serialize(graph)


def multi_io_bytes() -> bytes:
    """Inputs `a` float32 [-1, 2], `b` int64 [-1, 1], `s` string [-1]; outputs `sum` float32
    [-1, 2] (a + b) and `s_bytes` (s echoed), for named, int and b64 paths."""
    graph = helper.make_graph(
        [helper.make_node("Cast", ["b"], ["bf"], to=TensorProto.FLOAT),
         helper.make_node("Add", ["a", "bf"], ["sum"]),
         helper.make_node("Identity", ["s"], ["s_bytes"])],
        "multi",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [None, 2]),
         helper.make_tensor_value_info("b", TensorProto.INT64, [None, 1]),
         helper.make_tensor_value_info("s", TensorProto.STRING, [None])],
        [helper.make_tensor_value_info("sum", TensorProto.FLOAT, [None, 2]),
         helper.make_tensor_value_info("s_bytes", TensorProto.STRING, [None])])
    return _serialize(graph)


def slow_bytes(layers: int = 40, width: int = 1024) -> bytes:
    """Input `x` float32 [-1, width]; a chain of MatMuls slow enough (tens of ms) to hold an
    executor busy while a test queues more requests."""
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
    nodes, previous = [], "x"
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [previous, "W"], [f"h{i}"]))
        previous = f"h{i}"
    nodes.append(helper.make_node("Identity", [previous], ["y"]))
    graph = helper.make_graph(
        nodes, "slow", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, width])],
        [numpy_helper.from_array(weight, "W")])
    return _serialize(graph)


def memory_bomb_bytes(rows: int = 100_000, cols: int = 8_192) -> bytes:
    """A graph of ~200 bytes whose every run, one row or many, fills a float tensor of the
    constant shape [rows, cols] (3.3 GB by default) with ones: a ConstantOfShape too large for
    ONNX Runtime to fold at load (> 1 GiB), so the warm-up allocates it. Input `x` float32
    [-1, 4], output `y` = x + the sum."""
    graph = helper.make_graph(
        [helper.make_node("ConstantOfShape", ["shape"], ["big"],
                          value=helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])),
         helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0),
         helper.make_node("Add", ["x", "total"], ["y"])],
        "bomb", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
        [numpy_helper.from_array(np.array([rows, cols], np.int64), "shape")])
    return _serialize(graph)


def shape_from_input_bytes() -> bytes:
    """Input `x` float32 [-1, 2]: allocates a float tensor whose shape is the first row's
    values, so its cost depends on what a client sends (a zero-row warm-up costs nothing).
    Output `y` = x + the tensor's sum."""
    graph = helper.make_graph(
        [helper.make_node("Gather", ["x", "first"], ["row"], axis=0),
         helper.make_node("Cast", ["row"], ["shape"], to=TensorProto.INT64),
         helper.make_node("ConstantOfShape", ["shape"], ["big"],
                          value=helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])),
         helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0),
         helper.make_node("Add", ["x", "total"], ["y"])],
        "sized_by_input", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
        [numpy_helper.from_array(np.array(0, np.int64), "first")])
    return _serialize(graph)


def slow_warm_up_bytes(layers: int = 2_000, width: int = 1024) -> bytes:
    """Input `x` float32 [-1, width]: every run, one row or many, expands its first row to
    [width, width] and multiplies that by a weight `layers` times: a minute of CPU (about 40 ms
    a layer here) in small memory, beyond what ONNX Runtime folds at load."""
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
    nodes = [helper.make_node("Slice", ["x", "zero", "one", "zero"], ["first"]),
             helper.make_node("Expand", ["first", "square"], ["h"])]
    previous = "h"
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [previous, "W"], [f"h{i}"]))
        previous = f"h{i}"
    nodes += [helper.make_node("ReduceSum", [previous], ["total"], keepdims=0),
              helper.make_node("Add", ["x", "total"], ["y"])]
    graph = helper.make_graph(
        nodes, "slow_warm_up",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, width])],
        [numpy_helper.from_array(weight, "W"),
         numpy_helper.from_array(np.array([0], np.int64), "zero"),
         numpy_helper.from_array(np.array([1], np.int64), "one"),
         numpy_helper.from_array(np.array([width, width], np.int64), "square")])
    return _serialize(graph)


def identity_bytes(element_type: int) -> bytes:
    """Input `x` of ONNX `element_type` (a `TensorProto` type), shape [-1, -1]; output `y`:
    `x` as it is. One per datatype shows each one's values arrive and return exactly."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "identity",
        [helper.make_tensor_value_info("x", element_type, [None, None])],
        [helper.make_tensor_value_info("y", element_type, [None, None])])
    return _serialize(graph)
