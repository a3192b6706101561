"""Triton's Python gRPC client (`tritonclient.grpc`) against the Open Inference Protocol v2
service of a target. Runs in .venv-clients; prints one JSON line with what it saw.

    python triton_client.py HOST:PORT
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

ROWS = [[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.0, 2.0]]


def infer_multi(client: Any, model: str) -> dict[str, Any]:
    a = grpcclient.InferInput("a", [2, 2], "FP32")
    a.set_data_from_numpy(np.array([[1, 2], [0.5, 0.5]], dtype=np.float32))
    b = grpcclient.InferInput("b", [2, 1], "INT64")
    b.set_data_from_numpy(np.array([[3], [-1]], dtype=np.int64))
    s = grpcclient.InferInput("s", [2], "BYTES")
    s.set_data_from_numpy(np.array(["ü€".encode(), b""], dtype=np.object_))
    result = client.infer(model, [a, b, s], client_timeout=30)
    texts = result.as_numpy("s_bytes")
    return {"sum": result.as_numpy("sum").tolist(),
            "s_bytes": [t.decode("utf-8") for t in texts.reshape(-1)],
            "s_bytes_type": type(texts.reshape(-1)[0]).__name__,
            "version": result.get_response().model_version}


def main(target: str) -> None:
    client = grpcclient.InferenceServerClient(url=target)
    x = grpcclient.InferInput("x", [2, 4], "FP32")
    x.set_data_from_numpy(np.array(ROWS, dtype=np.float32))
    result = client.infer("demo", [x], outputs=[grpcclient.InferRequestedOutput("probabilities")],
                          request_id="triton-1", client_timeout=30)
    response = result.get_response()
    metadata = client.get_model_metadata("demo", as_json=True)
    report: dict[str, Any] = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "demo_ready": client.is_model_ready("demo"),
        "tfdemo_ready": client.is_model_ready("tfdemo"),
        "nope_ready": client.is_model_ready("nope"),
        "server": client.get_server_metadata(as_json=True),
        "metadata": {"name": metadata["name"], "platform": metadata["platform"],
                     "versions": metadata["versions"],
                     "inputs": [[t["name"], t["datatype"], [int(d) for d in t["shape"]]]
                                for t in metadata["inputs"]],
                     "outputs": [[t["name"], t["datatype"], [int(d) for d in t["shape"]]]
                                 for t in metadata["outputs"]]},
        "demo": {"probabilities": result.as_numpy("probabilities").tolist(),
                 "id": response.id, "version": response.model_version},
        "multi": infer_multi(client, "multi"),
        "tfmulti": infer_multi(client, "tfmulti"),
    }
    try:
        client.infer("nope", [x], client_timeout=30)
    except InferenceServerException as exc:
        report["unknown_model"] = {"status": exc.status(), "message": exc.message()}
    client.close()
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
