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
