"""TensorFlow Serving's own Python client (`tensorflow_serving.apis` stubs, TensorFlow's
`make_tensor_proto` / `make_ndarray`) against a gRPC target, as an unchanged TF Serving client
would call it. Runs in .venv-clients; prints one JSON line with what it saw.

    python tfserving_client.py HOST:PORT
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import grpc
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

ROWS = [[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.0, 2.0]]
TIMEOUT_S = 30


def predict(stub: Any, model: str, inputs: dict[str, Any], label: str | None = None
            ) -> dict[str, Any]:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = "serving_default"
    if label:
        request.model_spec.version_label = label
    for name, tensor in inputs.items():
        request.inputs[name].CopyFrom(tensor)
    reply = stub.Predict(request, timeout=TIMEOUT_S)
    outputs = {}
    for name, proto in reply.outputs.items():
        array = tf.make_ndarray(proto)
        outputs[name] = {"dtype": tf.dtypes.as_dtype(proto.dtype).name,
                         "value": [v.decode("utf-8") if isinstance(v, bytes) else v
                                   for v in array.reshape(-1).tolist()],
                         "shape": list(array.shape)}
    return {"version": reply.model_spec.version.value, "outputs": outputs}


def metadata(stub: Any, model: str) -> dict[str, Any]:
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = model
    request.metadata_field.append("signature_def")
    reply = stub.GetModelMetadata(request, timeout=TIMEOUT_S)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    reply.metadata["signature_def"].Unpack(signatures)
    signature = signatures.signature_def["serving_default"]

    def infos(items: Any) -> dict[str, Any]:
        return {alias: {"dtype": tf.dtypes.as_dtype(info.dtype).name,
                        "shape": [d.size for d in info.tensor_shape.dim]}
                for alias, info in items.items()}

    return {"version": reply.model_spec.version.value, "method": signature.method_name,
            "inputs": infos(signature.inputs), "outputs": infos(signature.outputs)}


def status(stub: Any, model: str) -> list[dict[str, Any]]:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = model
    reply = stub.GetModelStatus(request, timeout=TIMEOUT_S)
    return [{"version": s.version,
             "state": get_model_status_pb2.ModelVersionStatus.State.Name(s.state),
             "error_code": s.status.error_code}
            for s in reply.model_version_status]


def main(target: str) -> None:
    with grpc.insecure_channel(target) as channel:
        predictions = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        models = model_service_pb2_grpc.ModelServiceStub(channel)
        x = tf.make_tensor_proto(ROWS, dtype=tf.float32)
        report: dict[str, Any] = {
            "x_uses_tensor_content": bool(x.tensor_content),
            "demo": predict(predictions, "demo", {"x": x}),
            # one float_val filling the shape, the way make_tensor_proto sends a broadcast value
            "demo_filled": predict(predictions, "demo", {
                "x": tf.make_tensor_proto(0.5, dtype=tf.float32, shape=[2, 4])}),
            "tfdemo_stable": predict(predictions, "tfdemo", {"x": x}, label="stable"),
            "multi": predict(predictions, "multi", {
                "a": tf.make_tensor_proto([[1, 2], [0.5, 0.5]], dtype=tf.float32),
                "b": tf.make_tensor_proto([[3], [-1]], dtype=tf.int64),
                "s": tf.make_tensor_proto(["ü€".encode(), b"text"])}),
            "metadata": metadata(predictions, "demo"),
            "status": status(models, "demo"),
            "tfdemo_status": status(models, "tfdemo"),
        }
        try:
            predict(predictions, "nope", {"x": x})
        except grpc.RpcError as exc:
            report["unknown_model"] = {"code": exc.code().name, "details": exc.details()}
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
