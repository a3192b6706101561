"""A real TorchServe for the tests, from `.venv-torchserve` (`make .venv-torchserve/.installed`).

`build_store` archives the test handlers (tests/servers/torchserve_handler.py) into `.mar` files
with torch-model-archiver: `tiny` versions 1 (scale 1) and 2 (scale 2), `failing`, `streaming`
and `echo`. `TorchServe` runs one server on 127.0.0.1 with every port chosen free and set
explicitly, token authorization and config snapshots off, and its temporary files (pid file,
worker sockets, unpacked models) in its own directory, so several can run at once; `start()`
returns when every model has a READY worker, `stop()` ends its process group. Java or torch
missing fails the test with what to install. The fixtures are in `tests.servers.torchserve`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv-torchserve"
HANDLER = Path(__file__).with_name("torchserve_handler.py")
INSTALL = ("make .venv-torchserve/.installed (python3 -m venv .venv-torchserve && "
           ".venv-torchserve/bin/pip install torch==2.13.0 torchserve==0.12.0 "
           "torch-model-archiver==0.12.0 pyyaml)")
START_TIMEOUT_S = 180.0  # workers import torch: slow on a busy 2-core machine
STOP_TIMEOUT_S = 30.0
#: Versions of `tiny` and the factor each applies to x before the softmax.
SCALES = {"1": 1.0, "2": 2.0}
ARCHIVES = ("tiny.mar", "tiny_v2.mar", "failing.mar", "streaming.mar", "echo.mar")


def tiny_answer(rows: list[list[float]], version: str = "1") -> np.ndarray:
    """What `tiny` answers, computed here: softmax(scale * x), first three columns."""
    scaled = np.asarray(rows, dtype=np.float64) * SCALES[version]
    exp = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
    probabilities: np.ndarray = exp / exp.sum(axis=-1, keepdims=True)
    return probabilities[:, :3]


def require_torchserve() -> None:
    """Fails (never skips) the test when TorchServe cannot run here, saying what to install."""
    missing = []
    if shutil.which("java") is None:
        missing.append("Java 17 (apt-get install -y openjdk-17-jre-headless)")
    tools = [VENV / "bin" / name for name in ("python", "torchserve", "torch-model-archiver")]
    if not all(tool.exists() for tool in tools) or subprocess.run(
            [str(tools[0]), "-c", "import torch, ts, yaml"], capture_output=True).returncode:
        missing.append(f"torch and TorchServe in {VENV}: {INSTALL}")
    if missing:
        pytest.fail("TorchServe tests need " + " and ".join(missing), pytrace=False)


def _run(*command: str | Path, cwd: Path) -> None:
    result = subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{' '.join(map(str, command))} failed:\n{result.stderr[-2000:]}")


def build_store(store: Path, work: Path) -> Path:
    """The archives in `store`: a TorchScript model per `tiny` version, one handler file."""
    python, archiver = VENV / "bin" / "python", VENV / "bin" / "torch-model-archiver"
    handler = work / HANDLER.name
    shutil.copy(HANDLER, handler)
    entry = str(handler.with_suffix(""))  # archiver syntax: path/module:function
    for version, scale in SCALES.items():
        out = work / f"v{version}"
        out.mkdir()
        _run(python, HANDLER, out / "tiny.pt", str(scale), cwd=work)
        _run(archiver, "--model-name", "tiny", "--version", version, "--serialized-file",
             out / "tiny.pt", "--handler", f"{entry}:tiny", "--export-path", out, cwd=work)
        name = "tiny.mar" if version == "1" else f"tiny_v{version}.mar"
        (out / "tiny.mar").rename(store / name)
    for name in ("failing", "streaming", "echo"):
        _run(archiver, "--model-name", name, "--version", "1", "--handler", f"{entry}:{name}",
             "--export-path", store, cwd=work)
    return store


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Ports:
    inference: int
    management: int
    metrics: int
    grpc_inference: int
    grpc_management: int

    @classmethod
    def free(cls) -> Ports:
        return cls(*(free_port() for _ in range(5)))


class TorchServe:
    def __init__(self, store: Path, workdir: Path, archives: tuple[str, ...] = ARCHIVES,
                 properties: tuple[str, ...] = ()) -> None:
        """`properties`: more config.properties lines, such as `job_queue_size=1`."""
        self.store = store
        self.workdir = workdir
        self.archives = archives
        self.properties = properties
        self.ports = Ports.free()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def grpc_inference(self) -> str:
        return f"127.0.0.1:{self.ports.grpc_inference}"

    @property
    def grpc_management(self) -> str:
        return f"127.0.0.1:{self.ports.grpc_management}"

    @property
    def rest_inference(self) -> str:
        return f"http://127.0.0.1:{self.ports.inference}"

    def start(self) -> None:
        require_torchserve()
        tmp = self.workdir / "tmp"  # TorchServe's pid file, worker sockets, unpacked models
        tmp.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "config.properties"
        p = self.ports
        config.write_text("\n".join([
            f"inference_address=http://127.0.0.1:{p.inference}",
            f"management_address=http://127.0.0.1:{p.management}",
            f"metrics_address=http://127.0.0.1:{p.metrics}",
            "grpc_inference_address=127.0.0.1",
            f"grpc_inference_port={p.grpc_inference}",
            "grpc_management_address=127.0.0.1",
            f"grpc_management_port={p.grpc_management}",
            "disable_token_authorization=true",
            "default_workers_per_model=1",
            f"model_store={self.store}",
            f"load_models={','.join(self.archives)}",
            *self.properties,
            ""]))
        env = {**os.environ, "TMPDIR": str(tmp), "TEMP": str(tmp),
               "PATH": f"{VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
        with (self.workdir / "torchserve.out").open("wb") as out:
            self.process = subprocess.Popen(
                [str(VENV / "bin" / "torchserve"), "--start", "--foreground", "--ncs",
                 "--ts-config", str(config), "--model-store", str(self.store)],
                cwd=self.workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)  # its own process group: stop() ends Java and workers
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        models = {"tiny" if a.startswith("tiny") else a.removesuffix(".mar")
                  for a in self.archives}
        while not all(self._ready(m) for m in models):
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"TorchServe exited with {self.process.returncode}:\n"
                                   f"{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"TorchServe not ready within {START_TIMEOUT_S} s:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.1)  # polling interval, not a wait for something to happen

    def _ready(self, model: str) -> bool:
        """Every version of `model` has a READY worker (the management API says so)."""
        url = f"http://127.0.0.1:{self.ports.management}/models/{model}/all"
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                described = json.load(reply)
        except (OSError, urllib.error.URLError, ValueError):
            return False
        return all(any(w["status"] == "READY" for w in d["workers"]) for d in described)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        group = self.process.pid  # the session leader: its pid is the group's id
        os.killpg(group, signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(group, signal.SIGKILL)
            self.process.wait()
        # Java and the workers share the group and may outlive the launcher by a moment
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while _group_alive(group):
            if time.monotonic() > deadline:
                os.killpg(group, signal.SIGKILL)
            time.sleep(0.05)  # polling interval

    def log_tail(self, lines: int = 40) -> str:
        log = self.workdir / "logs" / "ts_log.log"
        source = log if log.exists() else self.workdir / "torchserve.out"
        return "\n".join(source.read_text(errors="replace").splitlines()[-lines:])


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def torchserve_config(server: TorchServe, *, adapter: str = "ts", protocol: str = "rest",
                      models: tuple[str, ...] = ("tiny",), dead: str | None = None) -> str:
    """Gateway TOML (to append) routing `models` to `server`; `tiny` gets labels stable = 1
    and canary = 2, `streaming` is declared as streaming. A `dead` "host:port" goes first in
    every endpoint list."""
    first = [dead] if dead else []
    grpc = [*first, server.grpc_inference]
    rest = [*(f"http://{a}" for a in first), server.rest_inference]
    management = [*first, server.grpc_management]
    lines = [f"[adapters.{adapter}]", 'kind = "torchserve"', f'protocol = "{protocol}"',
             f"endpoints = {json.dumps(grpc)}", f"rest_endpoints = {json.dumps(rest)}",
             f"management_endpoints = {json.dumps(management)}",
             'streaming_models = ["streaming"]', "connect_timeout_s = 1", ""]
    for model in models:
        lines += [f"[models.{model}]", f'adapter = "{adapter}"']
        if model == "tiny":
            lines.append("labels = { stable = 1, canary = 2 }")
        lines.append("")
    return "\n".join(lines)
