"""The official clients over mTLS: TensorFlow Serving's stubs on a grpc secure channel and
Triton's gRPC client with `ssl=True`, each presenting a client certificate. Runs in
.venv-clients; prints one JSON line with what it saw.

    python tls_client.py HOST:PORT CA_FILE CLIENT_PEM   (CLIENT_PEM: key and certificate)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import grpc
import numpy as np
import tensorflow as tf
import tritonclient.grpc as grpcclient
from tensorflow_serving.apis import prediction_service_pb2_grpc
from tfserving_client import ROWS, predict


def main(target: str, ca_file: str, client_pem: str) -> None:
    ca, client = Path(ca_file).read_bytes(), Path(client_pem).read_bytes()
    credentials = grpc.ssl_channel_credentials(ca, private_key=client, certificate_chain=client)
    with grpc.secure_channel(target, credentials) as channel:
        tfserving = predict(prediction_service_pb2_grpc.PredictionServiceStub(channel), "demo",
                            {"x": tf.make_tensor_proto(ROWS, dtype=tf.float32)})
    triton = grpcclient.InferenceServerClient(url=target, ssl=True, root_certificates=ca_file,
                                              private_key=client_pem,
                                              certificate_chain=client_pem)
    x = grpcclient.InferInput("x", [2, 4], "FP32")
    x.set_data_from_numpy(np.array(ROWS, dtype=np.float32))
    result = triton.infer("demo", [x], client_timeout=30)
    report = {"tfserving": tfserving["outputs"]["probabilities"]["value"],
              "triton": result.as_numpy("probabilities").reshape(-1).tolist(),
              "triton_ready": triton.is_server_ready()}
    triton.close()
    print(json.dumps(report))


if __name__ == "__main__":
    main(*sys.argv[1:4])
