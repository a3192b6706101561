"""Writes the embedded demo model, `models/demo/1/model.onnx`: a small softmax classifier with
input `x` float32 [-1, 4] and output `probabilities` float32 [-1, 3] (rows sum to 1).

Run: .venv/bin/python scripts/make_demo_model.py [OUT]  (needs the `onnx` package)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Fixed weights, so the committed file is reproducible byte for byte.
WEIGHTS = np.array([[0.9, -0.4, 0.1], [-0.3, 0.8, -0.5], [0.2, -0.6, 1.1], [-0.7, 0.3, 0.4]],
                   dtype=np.float32)
BIAS = np.array([0.05, -0.02, 0.01], dtype=np.float32)


def demo_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes=[helper.make_node("Gemm", ["x", "W", "B"], ["logits"]),
               helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1)],
        name="demo_classifier",
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        outputs=[helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 3])],
        initializer=[numpy_helper.from_array(WEIGHTS, "W"), numpy_helper.from_array(BIAS, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="inference-gateway")
    model.ir_version = 8  # loadable by every ONNX Runtime release we support
    onnx.checker.check_model(model)
    return model


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("models/demo/1/model.onnx")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(demo_model().SerializeToString())
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
