"""Code that runs with TorchServe's Python (`.venv-torchserve`), not the gateway's: the handlers
the test archives carry, and (run as a script) the TorchScript model `tiny` serves.

    tiny       softmax(scale * x)[:, :3] for `{"x": [[...4 floats]]}` or `[[...]]` rows, as
               `{"probabilities": [[...]]}`; declares its signature when TorchServe asks
    failing    raises on every request (TorchServe answers 503 "Prediction failed"), or with
               a `fail-status` request header (or JSON body member: gRPC carries no headers)
               raises PredictionException with that status (and `fail-message`)
    echo       answers, as JSON, what it was given: each input's name, Python type and value
               (bytes as latin-1 text) and the request headers; a `set-status` request header
               makes it `set_response_status`, `set-content-type` answers its body as plain
               text with that content type, `set-header-NAME` sets response header NAME
    streaming  `{"parts": n, "gate": path, "fail": bool}`: n intermediate responses
               "part i\\n", then "done"; after the first it waits until `gate` exists, so a
               test can prove the first part reached it before the handler went on, and with
               `fail` it raises there instead of going on

    .venv-torchserve/bin/python tests/servers/torchserve_handler.py OUT.pt SCALE
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import torch
from ts.handler_utils.utils import send_intermediate_predict_response
from ts.utils.util import PredictionException

SIGNATURE = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
             "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}]}
GATE_TIMEOUT_S = 60.0
_models: dict[str, Any] = {}


def _documents(data: list[dict[str, Any]]) -> list[Any]:
    """Each request's JSON: gRPC's `data` arrives as bytes, REST's `body` already parsed."""
    documents = []
    for row in data:
        value = row.get("data") if row.get("data") is not None else row.get("body")
        documents.append(json.loads(value) if isinstance(value, bytes | bytearray) else value)
    return documents


def _describing(context: Any) -> bool:
    return bool(context.get_request_header(0, "describe") == "True")


def tiny(data: list[dict[str, Any]] | None, context: Any) -> list[Any] | None:
    model_dir = context.system_properties["model_dir"]
    if model_dir not in _models:
        _models[model_dir] = torch.jit.load(os.path.join(model_dir, "tiny.pt"))
    if data is None:  # TorchServe's initialization call
        return None
    if _describing(context):
        return [SIGNATURE]
    replies = []
    for document in _documents(data):
        rows = document["x"] if isinstance(document, dict) else document
        probabilities = _models[model_dir](torch.tensor(rows, dtype=torch.float32))
        replies.append({"probabilities": probabilities.tolist()})
    return replies


def failing(data: list[dict[str, Any]] | None, context: Any) -> list[Any] | None:
    if data is None or _describing(context):
        return None if data is None else [{}]
    try:
        asked = _documents(data)[0]
    except ValueError:  # not JSON: only the headers say what to do
        asked = None
    asked = asked if isinstance(asked, dict) else {}
    status = context.get_request_header(0, "fail-status") or asked.get("fail-status")
    if status:
        message = (context.get_request_header(0, "fail-message") or asked.get("fail-message")
                   or "failing on purpose")
        raise PredictionException(message, int(status))
    raise ValueError("the failing handler fails on purpose")


def _shown(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("latin-1")
    return value


def echo(data: list[dict[str, Any]] | None, context: Any) -> list[Any] | None:
    if data is None or _describing(context):
        return None if data is None else [{}]
    replies: list[Any] = []
    for index, row in enumerate(data):
        headers = dict(context.get_all_request_header(index))
        inputs = [{"name": name, "type": type(value).__name__, "value": _shown(value)}
                  for name, value in row.items()]
        for name, value in headers.items():
            if name.startswith("set-header-"):
                context.set_response_header(index, name.removeprefix("set-header-"), value)
        if headers.get("set-status"):
            context.set_response_status(int(headers["set-status"]), idx=index)
        document = {"inputs": inputs, "headers": headers}
        content_type = headers.get("set-content-type")
        if content_type:
            context.set_response_content_type(index, content_type)
            replies.append(json.dumps(document))
        else:
            replies.append(document)
    return replies


def streaming(data: list[dict[str, Any]] | None, context: Any) -> list[Any] | None:
    if data is None or _describing(context):
        return None if data is None else [{}]
    document = _documents(data)[0]
    for part in range(document["parts"]):
        send_intermediate_predict_response([f"part {part}\n"], context.request_ids,
                                           "Intermediate Prediction success", 200, context)
        if part == 0 and document.get("gate"):
            _wait_for(document["gate"])
        if part == 0 and document.get("fail"):
            raise RuntimeError("the streaming handler fails after its first part")
    return ["done\n"]


def _wait_for(path: str) -> None:
    deadline = time.monotonic() + GATE_TIMEOUT_S
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {path} never opened")
        time.sleep(0.005)


class Tiny(torch.nn.Module):
    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x * self.scale, dim=-1)[:, :3]


if __name__ == "__main__":
    torch.jit.script(Tiny(float(sys.argv[2]))).save(sys.argv[1])
