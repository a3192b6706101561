"""Real client libraries, each in its own process, against the gateway's gRPC port: TensorFlow
Serving's `tensorflow_serving.apis` with TensorFlow, Triton's `tritonclient.grpc`, and the
standard reflection and health clients. They live in `.venv-clients` (built by `make test`):
TensorFlow must never be importable by the gateway's own venv. The scripts are in
tests/clients/ and print one JSON line each."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.servers.running_gateway import RunningGateway
from tests.servers.tfserving_standin import TfServingStandIn, stable_answer

pytest_plugins = ["tests.servers.fixtures"]

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = Path(__file__).resolve().parent / "clients"
CLIENTS_PYTHON = ROOT / ".venv-clients" / "bin" / "python"
ROWS = [[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.0, 2.0]]
CLIENT_TIMEOUT_S = 180  # TensorFlow takes seconds to import


async def run_client(script: str, *args: str) -> Any:
    """Run tests/clients/`script` with the clients' interpreter; its last stdout line, parsed."""
    if not CLIENTS_PYTHON.exists():
        pytest.fail(f"{CLIENTS_PYTHON} is missing: run `make test`, which builds .venv-clients "
                    "(TensorFlow Serving's and Triton's client libraries) before the tests",
                    pytrace=False)
    process = await asyncio.create_subprocess_exec(
        str(CLIENTS_PYTHON), str(CLIENTS / script), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ""})
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), CLIENT_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, f"{script} failed:\n{stderr.decode()}"
    return json.loads(stdout.decode().strip().splitlines()[-1])


async def test_tensorflow_serving_client(gw: RunningGateway, standin: TfServingStandIn) -> None:
    report = await run_client("tfserving_client.py", gw.target)
    assert report["x_uses_tensor_content"]
    demo = report["demo"]
    assert demo["version"] == 1
    assert demo["outputs"]["probabilities"]["dtype"] == "float32"
    assert demo["outputs"]["probabilities"]["shape"] == [2, 3]
    rest = await gw.http.post("/v1/models/demo:predict", json={"instances": ROWS})
    np.testing.assert_array_equal(  # the same numbers REST gives
        np.float32(demo["outputs"]["probabilities"]["value"]).reshape(2, 3),
        np.float32((await rest.json())["predictions"]))
    np.testing.assert_allclose(
        np.reshape(report["demo_filled"]["outputs"]["probabilities"]["value"], (2, 3)),
        stable_answer([[0.5] * 4] * 2), rtol=1e-5)
    # through the gateway to the TF Serving backend, label and all
    stable = report["tfdemo_stable"]
    assert stable["version"] == 1
    np.testing.assert_allclose(np.reshape(stable["outputs"]["probabilities"]["value"], (2, 3)),
                               stable_answer(ROWS), rtol=1e-6)
    [sent] = standin.calls("Predict")
    assert sent.request.model_spec.version_label == "stable"
    multi = report["multi"]["outputs"]
    assert multi["sum"] == {"dtype": "float32", "value": [4.0, 5.0, -0.5, -0.5],
                            "shape": [2, 2]}
    assert multi["s_bytes"] == {"dtype": "string", "value": ["ü€", "text"], "shape": [2]}
    assert report["metadata"] == {
        "version": 1, "method": "tensorflow/serving/predict",
        "inputs": {"x": {"dtype": "float32", "shape": [-1, 4]}},
        "outputs": {"probabilities": {"dtype": "float32", "shape": [-1, 3]}}}
    assert report["status"] == [{"version": 1, "state": "AVAILABLE", "error_code": 0}]
    assert [s["version"] for s in report["tfdemo_status"]] == [1, 2]
    assert report["unknown_model"]["code"] == "NOT_FOUND"
    assert "model 'nope' not found" in report["unknown_model"]["details"]


async def test_triton_client(gw: RunningGateway, standin: TfServingStandIn) -> None:
    report = await run_client("triton_client.py", gw.target)
    assert (report["live"], report["ready"]) == (True, True)
    assert (report["demo_ready"], report["tfdemo_ready"], report["nope_ready"]) == \
        (True, True, False)
    assert report["server"]["name"] == "inference-gateway"
    assert report["metadata"] == {
        "name": "demo", "platform": "onnxruntime_onnx", "versions": ["1"],
        "inputs": [["x", "FP32", [-1, 4]]], "outputs": [["probabilities", "FP32", [-1, 3]]]}
    demo = report["demo"]
    assert (demo["id"], demo["version"]) == ("triton-1", "1")
    np.testing.assert_allclose(demo["probabilities"], stable_answer(ROWS), rtol=1e-5)
    for model in ("multi", "tfmulti"):  # in-process, and through the TF Serving backend
        assert report[model]["sum"] == [[4.0, 5.0], [-0.5, -0.5]], model
        assert report[model]["s_bytes"] == ["ü€", ""], model
        assert report[model]["s_bytes_type"] == "bytes"
        assert report[model]["version"] == "1"
    [sent] = standin.calls("Predict")  # tfmulti's BYTES arrived as TF strings
    assert list(sent.request.inputs["s"].string_val) == ["ü€".encode(), b""]
    assert report["unknown_model"]["status"] == "StatusCode.NOT_FOUND"
    assert "model 'nope' not found" in report["unknown_model"]["message"]


async def test_reflection_client(gw: RunningGateway) -> None:
    report = await run_client("reflection_client.py", gw.target)
    assert report["services"] == sorted([
        "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
        "inference.GRPCInferenceService", "tensorflow.serving.ModelService",
        "tensorflow.serving.PredictionService"])
    methods = report["methods"]
    assert {"Predict", "GetModelMetadata", "Classify", "Regress"} <= \
        set(methods["tensorflow.serving.PredictionService"])
    assert methods["tensorflow.serving.ModelService"][0] == "GetModelStatus"
    assert {"ModelInfer", "ModelMetadata", "ModelReady", "ServerLive", "ServerReady",
            "ServerMetadata"} <= set(methods["inference.GRPCInferenceService"])


async def test_health_client(gw: RunningGateway) -> None:
    services = ["tensorflow.serving.PredictionService", "tensorflow.serving.ModelService",
                "inference.GRPCInferenceService"]
    report = await run_client("health_client.py", gw.target, *services)
    assert report["check"] == dict.fromkeys(["", *services], "SERVING")
    assert report["watch"] == "SERVING"
    assert report["unknown_service"] == "NOT_FOUND"
