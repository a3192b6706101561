"""A real MLServer for the tests, from `.venv-mlserver` (`make .venv-mlserver/.installed`; its
own venv, since MLServer pins protobuf < 7).

`write_repository` trains a scikit-learn `LogisticRegression` at test time, inside that venv,
on a fixed synthetic set (4 features, 3 classes) and saves it with joblib as the model
`classes`, served by the `mlserver_sklearn` runtime; its `model-settings.json` declares the
signature (FP32 `x` [-1, 4] to INT64 `predict` [-1, 1]). `MLServer` runs one server on
127.0.0.1 with its HTTP, gRPC and metrics ports free and inference in its main process;
`start()` returns once the model's `/v2/models/classes/ready` answers 200, `stop()` ends it.
The fixtures are in `tests.servers.mlserver`.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.servers import process_group
from tests.servers.torchserve_server import free_port

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv-mlserver"
INSTALL = ("make .venv-mlserver/.installed (python3 -m venv .venv-mlserver && "
           ".venv-mlserver/bin/pip install mlserver==1.7.1 mlserver-sklearn==1.7.1 "
           "scikit-learn==1.9.1)")
MODEL = "classes"

_TRAIN = """\
import sys

import joblib
import numpy as np
from sklearn.linear_model import LogisticRegression

rng = np.random.default_rng(7)
x = rng.normal(size=(300, 4)).astype(np.float32)
y = (x[:, 0] + x[:, 1] > 0).astype(int) + (x[:, 2] > 0.5).astype(int)
joblib.dump(LogisticRegression(max_iter=500).fit(x, y), sys.argv[1])
"""


def require_mlserver() -> None:
    """Fails (never skips) the test when MLServer cannot run here, saying what to install."""
    python, mlserver = VENV / "bin" / "python", VENV / "bin" / "mlserver"
    if not mlserver.exists() or subprocess.run(
            [str(python), "-c", "import mlserver_sklearn, sklearn, joblib"],
            capture_output=True).returncode:
        pytest.fail(f"MLServer tests need MLServer and scikit-learn in {VENV}: {INSTALL}",
                    pytrace=False)


def write_repository(root: Path) -> Path:
    """`root` holding the trained model `classes` and its settings."""
    folder = root / MODEL
    folder.mkdir(parents=True)
    subprocess.run([str(VENV / "bin" / "python"), "-c", _TRAIN, str(folder / "model.joblib")],
                   check=True, capture_output=True)
    (folder / "model-settings.json").write_text(json.dumps({
        "name": MODEL, "implementation": "mlserver_sklearn.SKLearnModel",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "predict", "datatype": "INT64", "shape": [-1, 1]}],
        "parameters": {"uri": "./model.joblib", "version": "1"}}))
    return root


class MLServer(process_group.ServerProcess):
    name = "mlserver"
    ready_path = f"/v2/models/{MODEL}/ready"

    def __init__(self, repository: Path, workdir: Path) -> None:
        super().__init__(repository, workdir)
        self.metrics_port = free_port()

    def command(self) -> list[str]:
        require_mlserver()
        return [str(VENV / "bin" / "mlserver"), "start", str(self.repository)]

    def env(self) -> dict[str, str]:
        return {**os.environ,
                "PATH": os.pathsep.join([str(VENV / "bin"), os.environ.get("PATH", "")]),
                # settings by environment: the repository (the folder `start` reads) is shared
                **{f"MLSERVER_{key}": str(value) for key, value in {
                    "HOST": "127.0.0.1", "HTTP_PORT": self.http_port,
                    "GRPC_PORT": self.grpc_port, "METRICS_PORT": self.metrics_port,
                    "PARALLEL_WORKERS": 0}.items()}}
