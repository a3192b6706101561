"""Triton's Python clients against the Open Inference Protocol v2 doors of a target. Runs in
.venv-clients; prints one JSON line with what it saw.

    python triton_client.py HOST:PORT            # tritonclient.grpc: metadata, infer, errors
    python triton_client.py dtypes HTTP GRPC     # every datatype through identity models
"""

from __future__ import annotations

import json
import queue
import sys
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
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


# Per datatype: the numpy dtype tritonclient takes and [2, 3] values at its edges (BF16 is left
# out: ONNX Runtime's Python API takes no bfloat16 arrays, so no in-process model serves one,
# and tests/test_v2_binary.py covers it at the door). BYTES are UTF-8, as JSON and ONNX string
# tensors need, with a NUL and control bytes.
VALUES: dict[str, tuple[Any, list[Any]]] = {
    "BOOL": (np.bool_, [True, False, True, False, False, True]),
    "UINT8": (np.uint8, [0, 1, 7, 128, 254, 255]),
    "UINT16": (np.uint16, [0, 1, 7, 256, 65534, 65535]),
    "UINT32": (np.uint32, [0, 1, 7, 65536, 2**32 - 2, 2**32 - 1]),
    "UINT64": (np.uint64, [0, 1, 7, 2**32, 2**64 - 2, 2**64 - 1]),
    "INT8": (np.int8, [-128, -1, 0, 1, 126, 127]),
    "INT16": (np.int16, [-32768, -1, 0, 1, 32766, 32767]),
    "INT32": (np.int32, [-(2**31), -1, 0, 1, 2**31 - 2, 2**31 - 1]),
    "INT64": (np.int64, [-(2**63), -1, 0, 1, 2**63 - 2, 2**63 - 1]),
    "FP16": (np.float16, [0.5, -1.5, 65504.0, 6.1035156e-05, -0.0, 0.0999755859375]),
    "FP32": (np.float32, [0.1, -2.5, 3.4028235e38, 1e-7, 1.1754944e-38, -0.0]),
    "FP64": (np.float64, [0.1, -2.5, 1.7976931348623157e308, 5e-324, 1 / 3, -0.0]),
    "BYTES": (np.object_, [b"", b"\x00nul", "\u00fc\u20ac".encode(), b"a" * 300, b'{"j": 1}',
                           b"\n\x01"]),
}
# How each call sends the input and asks for the output: (client, input as binary data, output:
# None asks for none (every output, in binary with tritonclient.http), else its binary_data).
MODES: dict[str, tuple[str, bool, bool | None]] = {
    "http_defaults": ("http", True, None),
    "http_binary_output": ("http", True, True),
    "http_json": ("http", False, False),
    "http_json_in_binary_out": ("http", False, True),
    "http_binary_in_json_out": ("http", True, False),
    "grpc": ("grpc", True, None),
    "grpc_output_named": ("grpc", True, True),
}


def values(datatype: str) -> np.ndarray:
    dtype, items = VALUES[datatype]
    array = np.empty(6, dtype=object) if dtype is np.object_ else np.array(items, dtype=dtype)
    if dtype is np.object_:
        array[:] = items
    return array.reshape(2, 3)


def plain(array: np.ndarray) -> dict[str, Any]:
    """What a client got, comparable in JSON: dtype, shape, and exact values (bytes as hex,
    text as its UTF-8 bytes; floats by their bits, so -0.0 and the last digit count)."""
    flat = array.reshape(-1)
    if array.dtype == np.object_:
        items: list[Any] = [(v.encode() if isinstance(v, str) else bytes(v)).hex() for v in flat]
    elif array.dtype.kind in "fV":
        items = [v.hex() for v in (x.tobytes() for x in flat)]
    else:
        items = flat.tolist()
    return {"dtype": str(array.dtype), "shape": list(array.shape), "values": items}


def infer_one(clients: dict[str, Any], datatype: str, mode: str) -> dict[str, Any]:
    kind, binary_in, binary_out = MODES[mode]
    module: Any = httpclient if kind == "http" else grpcclient
    sent = values(datatype)
    tensor = module.InferInput("x", list(sent.shape), datatype)
    if kind == "http":
        tensor.set_data_from_numpy(sent, binary_data=binary_in)
    else:
        tensor.set_data_from_numpy(sent)
    outputs = None
    if binary_out is not None:
        outputs = [module.InferRequestedOutput("y", binary_data=binary_out) if kind == "http"
                   else module.InferRequestedOutput("y")]
    try:
        result = clients[kind].infer(f"id_{datatype.lower()}", [tensor], outputs=outputs,
                                     request_id=f"{datatype}-{mode}")
    except InferenceServerException as exc:
        return {"error": f"{exc.status()}: {exc.message()}"}
    response = result.get_response()
    if kind == "http":  # whether the output came back as binary data after the JSON
        response_id = response["id"]
        binary = "binary_data_size" in response["outputs"][0].get("parameters", {})
    else:
        response_id, binary = response.id, bool(response.raw_output_contents)
    return {"sent": plain(sent), "got": plain(result.as_numpy("y")), "id": response_id,
            "binary_reply": binary}


#: Custom request parameters, which the gateway must hand its backend as they are.
PARAMETERS = {"temperature": 0.5, "tag": "t-1", "count": 3, "flag": True}


def infer_with_parameters(clients: dict[str, Any], kind: str) -> str:
    module: Any = httpclient if kind == "http" else grpcclient
    tensor = module.InferInput("x", [1, 1], "FP32")
    tensor.set_data_from_numpy(np.float32([[1]]))
    result = clients[kind].infer("id_fp32", [tensor], request_id=f"parameters-{kind}",
                                 parameters=PARAMETERS)
    return str(result.as_numpy("y").tolist())


def stream(client: Any) -> dict[str, Any]:
    """ModelStreamInfer: three requests on one stream, the second for a model that does not
    exist; every one is answered, in whatever order."""
    answers: queue.Queue[dict[str, Any]] = queue.Queue()

    def callback(result: Any, error: Any) -> None:
        if error is not None:
            answers.put({"error": error.message()})
        else:
            answers.put({"id": result.get_response().id,
                         "y": result.as_numpy("y").tolist()})

    client.start_stream(callback=callback)
    for n, model in enumerate(["id_int32", "nope", "id_int32"]):
        tensor = grpcclient.InferInput("x", [1, 2], "INT32")
        tensor.set_data_from_numpy(np.int32([[n, -n]]))
        client.async_stream_infer(model, [tensor], request_id=f"stream-{n}")
    client.stop_stream()  # waits until every request is answered
    got = [answers.get(timeout=30) for _ in range(3)]
    return {"answers": sorted(got, key=lambda a: a.get("id", "")), "more": answers.qsize()}


def datatypes(http_target: str, grpc_target: str) -> None:
    clients = {"http": httpclient.InferenceServerClient(url=http_target),
               "grpc": grpcclient.InferenceServerClient(url=grpc_target)}
    report: dict[str, Any] = {datatype: {mode: infer_one(clients, datatype, mode)
                                         for mode in MODES} for datatype in VALUES}
    report["server"] = {"http": clients["http"].get_server_metadata(),
                        "grpc": clients["grpc"].get_server_metadata(as_json=True)}
    report["parameters"] = {kind: infer_with_parameters(clients, kind) for kind in clients}
    report["stream"] = stream(clients["grpc"])
    sent = values("INT32")
    tensor = httpclient.InferInput("x", list(sent.shape), "INT32")
    tensor.set_data_from_numpy(sent)
    report["gzip"] = plain(clients["http"].infer(
        "id_int32", [tensor], request_compression_algorithm="gzip").as_numpy("y"))
    for client in clients.values():
        client.close()
    print(json.dumps(report))


if __name__ == "__main__":
    if sys.argv[1] == "dtypes":
        datatypes(sys.argv[2], sys.argv[3])
    else:
        main(sys.argv[1])
