"""A real Triton Inference Server for the tests, from `.venv-triton` (`make
.venv-triton/.installed`): the `tritonserver` binary of the `nvidia-pytriton` wheel, CPU only,
with its Python backend.

`write_repository` makes a model repository at test time, every model a `config.pbtxt` and a
`model.py` using `triton_python_backend_utils`, dynamic batching on:

- `affine`, versions 1 and 2: `y = scale * x + version` on FP32 `x` [-1, 4], where `scale` is
  the request parameter of that name (2 when absent), so a test sees parameters arrive, and
  the parameter `delay_s` makes it take that long;
- `words`: BYTES `text` [-1, 1] to BYTES `upper` and INT64 `length` of the same shape.

`Triton` runs one server on 127.0.0.1 with its HTTP and gRPC ports free and its metrics off;
`start()` returns once `/v2/health/ready` answers 200, `stop()` ends it. The fixtures are in
`tests.servers.triton`.
"""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.servers import process_group

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv-triton"
PYTHON_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"
SITE = VENV / "lib" / f"python{PYTHON_VERSION}" / "site-packages"
SERVER = SITE / "pytriton" / "tritonserver"
INSTALL = ("make .venv-triton/.installed (python3 -m venv .venv-triton && "
           ".venv-triton/bin/pip install nvidia-pytriton, then the Python backend stub copied "
           "into pytriton/tritonserver/backends/python/)")
VERSIONS = ("1", "2")
DEFAULT_SCALE = 2.0

_AFFINE_CONFIG = """\
name: "affine"
backend: "python"
max_batch_size: 8
version_policy: { all { } }
input [ { name: "x", data_type: TYPE_FP32, dims: [ 4 ] } ]
output [ { name: "y", data_type: TYPE_FP32, dims: [ 4 ] } ]
dynamic_batching { max_queue_delay_microseconds: 200 }
instance_group [ { kind: KIND_CPU, count: 1 } ]
"""

_AFFINE_MODEL = """\
import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.offset = float(args["model_version"])

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            parameters = json.loads(request.parameters() or "{}")
            time.sleep(float(parameters.get("delay_s", 0)))
            scale = float(parameters.get("scale", {default}))
            y = (scale * x + self.offset).astype(np.float32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", y)]))
        return responses
"""

_WORDS_CONFIG = """\
name: "words"
backend: "python"
max_batch_size: 8
input [ { name: "text", data_type: TYPE_STRING, dims: [ 1 ] } ]
output [
  { name: "upper", data_type: TYPE_STRING, dims: [ 1 ] },
  { name: "length", data_type: TYPE_INT64, dims: [ 1 ] }
]
dynamic_batching { max_queue_delay_microseconds: 200 }
instance_group [ { kind: KIND_CPU, count: 1 } ]
"""

_WORDS_MODEL = """\
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            text = pb_utils.get_input_tensor_by_name(request, "text").as_numpy()
            upper = np.vectorize(bytes.upper, otypes=[object])(text)
            length = np.vectorize(len, otypes=[np.int64])(text)
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor("upper", upper), pb_utils.Tensor("length", length)]))
        return responses
"""


def affine_answer(x: np.ndarray, version: str = "2", scale: float = DEFAULT_SCALE
                  ) -> np.ndarray:
    """What `affine` answers (the latest version unless `version` says)."""
    return (scale * np.asarray(x, np.float32) + float(version)).astype(np.float32)


def words_answer(text: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """What `words` answers for a column of texts: their upper case and lengths."""
    return (np.array([[t.upper()] for t in text], dtype=object),
            np.array([[len(t)] for t in text], dtype=np.int64))


def require_triton() -> None:
    """Fails (never skips) the test when Triton cannot run here, saying what to install."""
    stub = SERVER / "backends" / "python" / "triton_python_backend_stub"
    if not (SERVER / "bin" / "tritonserver").exists() or not stub.exists():
        pytest.fail(f"Triton tests need tritonserver and its Python backend stub in {VENV}: "
                    f"{INSTALL}", pytrace=False)


def write_repository(root: Path) -> Path:
    """The model repository `root`: `affine` (versions 1 and 2) and `words`."""
    affine = _AFFINE_MODEL.replace("{default}", repr(DEFAULT_SCALE))
    for name, config, model, versions in (("affine", _AFFINE_CONFIG, affine, VERSIONS),
                                          ("words", _WORDS_CONFIG, _WORDS_MODEL, ("1",))):
        (root / name).mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(config)
        for version in versions:
            (root / name / version).mkdir()
            (root / name / version / "model.py").write_text(textwrap.dedent(model))
    return root


class Triton(process_group.ServerProcess):
    name = "tritonserver"

    def __init__(self, repository: Path, workdir: Path, options: tuple[str, ...] = ()) -> None:
        """`options`: more `tritonserver` flags, such as `--trace-config=...`."""
        super().__init__(repository, workdir)
        self.options = options

    def command(self) -> list[str]:
        require_triton()
        return [str(SERVER / "bin" / "tritonserver"), f"--model-repository={self.repository}",
                f"--backend-directory={SERVER / 'backends'}",
                "--http-address=127.0.0.1", f"--http-port={self.http_port}",
                "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}",
                "--allow-metrics=false", "--strict-readiness=true", "--exit-on-error=true",
                *self.options]

    def env(self) -> dict[str, str]:
        libraries = [str(SERVER / "lib"), str(SITE / "nvidia_pytriton.libs")]
        return {**os.environ,
                "LD_LIBRARY_PATH": os.pathsep.join(
                    [*libraries, os.environ.get("LD_LIBRARY_PATH", "")]),
                # the model processes embed Python, which finds its prefix (so the venv's
                # numpy) from the first `python3` on PATH
                "PATH": os.pathsep.join([str(VENV / "bin"), os.environ.get("PATH", "")])}
