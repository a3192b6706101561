#!/usr/bin/env python3
"""In-process batching against its peers (issue 13): the gateway's in-process ONNX path versus
MLServer on the same ONNX model, and versus Triton on the same tiny arithmetic, one core each.

Measured in one run, every server alone on core 0 (`taskset`, every thread of every process)
and wrk -t1 on core 1, the v2 REST JSON body of one row per request, at concurrency 1 and 64:

  MLP (bench/batching.py's model, 256→1024→1024→10, `POST /v2/models/mlp/infer`)
    gateway, batching on    `gateway serve`, onnx adapter, max_batch_size 64, no queue delay
    gateway, batching off   the same with max_batch_size 1
    MLServer                MLServer 1.7.1 (`.venv-mlserver`), bench/mlserver_onnx.py's ONNX
                            Runtime model with adaptive batching (max_batch_size 64,
                            max_batch_time 1 ms), inference in its main process
  tiny (y = 2x + 2 on FP32 [-1, 4], `POST /v2/models/affine/infer`)
    gateway, batching on    the same gateway, the arithmetic as a Mul+Add ONNX model
    Triton                  tests/servers/triton_server.py's `affine` (Python backend, dynamic
                            batching) through Triton's own REST front end

CPU per request is the server's whole process tree's (/proc), split for the gateway into its
event-loop thread and the rest (batch executors running ONNX Runtime), for Triton into the
`tritonserver` process and its Python model process. Targets (issue 13): at c=64 the gateway
>= 4x MLServer's req/s with <= 0.5x its p99; >= 0.8x Triton's req/s with <= 1.5x its p99.

    .venv/bin/python bench/peers.py            # ~2.5 min
    .venv/bin/python bench/peers.py --quick    # ~1 min

Needs wrk, taskset, `make .venv-mlserver/.installed` and `make .venv-triton/.installed`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from batching import (  # noqa: E402
    MODEL,
    Server,
    build_mlp,
    check_answer,
    ort_session,
    progress,
    run_wrk,
    settle,
    write_config,
)
from common import markdown_table, missing_parts, process_tree_cpu  # noqa: E402
from torchserve import pin_group  # noqa: E402
from v2_backend import BODY, process_cpu_s  # noqa: E402
from v2_backend import check_answer as check_affine  # noqa: E402

from tests.servers.mlserver_server import VENV as MLSERVER_VENV  # noqa: E402
from tests.servers.mlserver_server import MLServer, require_mlserver  # noqa: E402
from tests.servers.triton_server import Triton, require_triton, write_repository  # noqa: E402

SERVER_CPU, CLIENT_CPU = 0, 1
DIMS = [256, 1024, 1024, 10]
TINY = "affine"
BATCH = 64
RUNTIME = Path(__file__).resolve().parent / "mlserver_onnx.py"

#: Named CPU-seconds counters of a server, read before and after each measurement.
CpuParts = Callable[[], dict[str, float]]


@dataclass
class Run:
    model: str
    setup: str
    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float
    split: str  # CPU µs per request by part, where the server has parts
    errors: int


def build_affine() -> bytes:
    """`y = 2 x + 2` on FP32 `x` [-1, 4]: what Triton's `affine` (version 2) computes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["twice"]),
         helper.make_node("Add", ["twice", "two"], ["y"])], TINY,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[numpy_helper.from_array(np.array(2.0, np.float32), "two")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="bench/peers.py")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def mlserver_repository(root: Path, model: Path) -> Path:
    """`root/mlp`: the ONNX model, bench/mlserver_onnx.py and settings with adaptive batching."""
    folder = root / MODEL
    folder.mkdir(parents=True)
    shutil.copy(model, folder / "model.onnx")
    shutil.copy(RUNTIME, folder / RUNTIME.name)
    (folder / "model-settings.json").write_text(json.dumps({
        "name": MODEL, "implementation": f"{RUNTIME.stem}.OnnxModel",
        "max_batch_size": BATCH, "max_batch_time": 0.001,
        "parameters": {"uri": "./model.onnx", "version": "1"}}))
    return root


class OnnxMLServer(MLServer):
    ready_path = f"/v2/models/{MODEL}/ready"


def require_mlserver_onnx() -> None:
    require_mlserver()
    if subprocess.run([str(MLSERVER_VENV / "bin" / "python"), "-c", "import onnxruntime"],
                      capture_output=True).returncode:
        pytest.fail(f"onnxruntime is not installed in {MLSERVER_VENV}: "
                    f"{MLSERVER_VENV}/bin/pip install onnxruntime==1.31.1 (the Makefile's "
                    ".venv-mlserver/.installed pins it)", pytrace=False)


def measure(model: str, setup: str, url: str, body: Path, connections: int,
            args: argparse.Namespace, parts: CpuParts) -> Run:
    settle({SERVER_CPU, CLIENT_CPU}, args.settle)
    run_wrk(url, body, connections, args.warmup, CLIENT_CPU)
    before = parts()
    stats = run_wrk(url, body, connections, args.seconds, CLIENT_CPU)
    after = parts()
    requests = max(stats["requests"], 1)
    used = {name: (after[name] - before[name]) * 1e6 / requests for name in after}
    run = Run(model, setup, connections, requests / (stats["duration_us"] / 1e6),
              stats["p50_us"] / 1000, stats["p99_us"] / 1000, sum(used.values()),
              " + ".join(f"{v:.0f} {k}" for k, v in used.items()) if len(used) > 1 else "",
              int(sum(v for k, v in stats.items() if k.startswith("err_"))))
    progress(f"{model}, {setup}, c={connections}: {run.rps:,.0f} req/s, p99 "
             f"{run.p99_ms:.2f} ms, {run.cpu_us:.0f} µs CPU/req")
    return run


def gateway_parts(server: Server) -> CpuParts:
    return lambda: dict(zip(("event loop", "workers"), server.cpu(), strict=True))


def run_gateways(tmp: Path, repository: Path, args: argparse.Namespace,
                 concurrencies: list[int], expected: np.ndarray) -> list[Run]:
    runs = []
    for setup, max_batch, models in (("gateway, batching on", BATCH, (MODEL, TINY)),
                                     ("gateway, batching off", 1, (MODEL,))):
        config = tmp / f"gateway-{max_batch}.toml"
        write_config(config, repository, max_batch_size=max_batch, delay_ms=0.0,
                     concurrent_batches=1, intra_op_threads=1)
        server = Server(config, SERVER_CPU, tmp / f"gateway-{max_batch}.log")
        try:
            server.wait_ready()
            check_answer(server, args.mlp_body.read_bytes(), expected)
            check_affine(f"{server.base}/v2/models/{TINY}/infer")
            for model in models:
                body = args.mlp_body if model == MODEL else args.tiny_body
                runs += [measure(model, setup, f"{server.base}/v2/models/{model}/infer", body,
                                 c, args, gateway_parts(server)) for c in concurrencies]
        finally:
            server.stop()
    return runs


def run_mlserver(tmp: Path, model: Path, args: argparse.Namespace, concurrencies: list[int],
                 expected: np.ndarray) -> list[Run]:
    server = OnnxMLServer(mlserver_repository(tmp / "mlserver-models", model), tmp / "mlserver")
    progress("starting MLServer")
    server.start()
    try:
        assert server.process is not None
        pid = server.process.pid
        pin_group(pid, SERVER_CPU)
        # batching.check_answer only reads `.base`
        check_answer(SimpleNamespace(base=server.http_url),  # type: ignore[arg-type]
                     args.mlp_body.read_bytes(), expected)
        url = f"{server.http_url}/v2/models/{MODEL}/infer"
        return [measure(MODEL, "MLServer 1.7.1, adaptive batching", url, args.mlp_body, c,
                        args, lambda: {"mlserver": process_tree_cpu(pid)})
                for c in concurrencies]
    finally:
        server.stop()


def run_triton(tmp: Path, args: argparse.Namespace, concurrencies: list[int]) -> list[Run]:
    triton = Triton(write_repository(tmp / "triton-models"), tmp / "triton")
    progress("starting Triton")
    triton.start()
    try:
        assert triton.process is not None
        pid = triton.process.pid
        pin_group(pid, SERVER_CPU)
        url = f"{triton.http_url}/v2/models/{TINY}/infer"
        check_affine(url)

        def parts() -> dict[str, float]:
            server = process_cpu_s(pid)
            return {"tritonserver": server, "model": process_tree_cpu(pid) - server}

        return [measure(TINY, "Triton, Python backend, dynamic batching", url,
                        args.tiny_body, c, args, parts) for c in concurrencies]
    finally:
        triton.stop()


def verdicts(runs: list[Run], c: int, targets: bool) -> list[str]:
    """Each ratio at concurrency `c`, with its target (set for c=64) if `targets`."""
    def find(model: str, prefix: str) -> Run | None:
        return next((r for r in runs if r.model == model and r.concurrency == c
                     and r.setup.startswith(prefix)), None)

    on, off = find(MODEL, "gateway, batching on"), find(MODEL, "gateway, batching off")
    mlserver, tiny, triton = find(MODEL, "MLServer"), find(TINY, "gateway"), find(TINY, "Triton")
    lines = []
    for label, a, b, key, target, better in (
            ("MLP: gateway / MLServer req/s", on, mlserver, "rps", 4.0, "ge"),
            ("MLP: gateway / MLServer p99", on, mlserver, "p99_ms", 0.5, "le"),
            ("MLP: gateway batching on / off req/s", on, off, "rps", None, "ge"),
            ("tiny: gateway / Triton req/s", tiny, triton, "rps", 0.8, "ge"),
            ("tiny: gateway / Triton p99", tiny, triton, "p99_ms", 1.5, "le")):
        if a is None or b is None:
            continue
        ratio = getattr(a, key) / getattr(b, key)
        verdict = ""
        if targets and target is not None:
            met = ratio >= target if better == "ge" else ratio <= target
            verdict = f"   target {'>=' if better == 'ge' else '<='} {target:g}x: " + (
                "met" if met else "MISSED")
        lines.append(f"- {label} at c={c}: {ratio:.2f}x{verdict}")
    return lines


def report(runs: list[Run]) -> str:
    rows = [[r.setup, r.model, str(r.concurrency), f"{r.rps:,.0f}", f"{r.p50_ms:.2f}",
             f"{r.p99_ms:.2f}", f"{r.cpu_us:.0f}" + (f" ({r.split})" if r.split else "")
             + (f" errors: {r.errors}" if r.errors else "")] for r in runs]
    return "\n".join(markdown_table(["server (core 0)", "model", "c", "req/s", "p50 ms",
                                     "p99 ms", "CPU µs/req"], rows))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="per wrk run (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="wrk warm-up before each run "
                        "(default 2)")
    parser.add_argument("--concurrency", default="1,64", help="wrk connections (default 1,64)")
    parser.add_argument("--settle", type=float, default=5.0, metavar="SECONDS",
                        help="wait up to this long for both cores to idle before each run")
    parser.add_argument("--quick", action="store_true", help="3 s runs, 1 s warm-up")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup = 3, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = (missing_parts(("wrk", "taskset"), require_triton)
               + missing_parts((), require_mlserver_onnx))
    if missing:
        raise SystemExit("bench/peers.py: " + "; ".join(missing))
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp_name:
        tmp = Path(tmp_name)
        repository = tmp / "models"
        mlp = repository / MODEL / "1" / "model.onnx"
        for path, content in ((mlp, build_mlp(DIMS)),
                              (repository / TINY / "1" / "model.onnx", build_affine())):
            path.parent.mkdir(parents=True)
            path.write_bytes(content)
        data = [round(float(v), 5) for v in np.random.default_rng(0).standard_normal(DIMS[0])]
        args.mlp_body, args.tiny_body = tmp / "mlp.json", tmp / "tiny.json"
        args.mlp_body.write_text(json.dumps({"inputs": [
            {"name": "x", "shape": [1, DIMS[0]], "datatype": "FP32", "data": data}]}))
        args.tiny_body.write_text(json.dumps(BODY))
        expected = ort_session(mlp, 1).run(["y"], {"x": np.asarray([data], np.float32)})[0][0]
        runs = run_gateways(tmp, repository, args, concurrencies, expected)
        runs += run_mlserver(tmp, mlp, args, concurrencies, expected)
        runs += run_triton(tmp, args, concurrencies)
    print(f"\nwrk -t1 on core {CLIENT_CPU}, each server alone on core {SERVER_CPU}; "
          f"{args.seconds} s per run after {args.warmup} s warm-up; one row per request\n")
    print(report(runs))
    print()
    top = max(concurrencies)
    for c in sorted(concurrencies, reverse=True):
        print("\n".join(verdicts(runs, c, targets=c == top)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
