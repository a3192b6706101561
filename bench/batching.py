#!/usr/bin/env python3
"""Dynamic batching benchmark: does batching pay for a compute-bound model behind the gateway?

Builds an MLP ONNX model (Gemm+Relu layers, fixed seed) into a temporary model repository,
then measures, in one run:

  (a) ONNX Runtime in-process with no gateway: batch 1, and batch = max_batch_size (per row);
  (b) the gateway with batching off (max_batch_size = 1);
  (c) the gateway with batching on (max_batch_size = 64, max_queue_delay_ms = 0) for each
      `--concurrent-batches` value,

driving `POST /v2/models/mlp/infer` (v2 JSON, one row per request) with wrk at concurrency 1,
16 and 64, after a warm-up at the same concurrency. The gateway runs pinned to one core
(`taskset -c 0`) and wrk to another (`taskset -c 1`). The server's CPU time per request comes
from /proc/PID/stat, split into the event-loop thread and all other threads (batch executors,
where ONNX Runtime runs) from /proc/PID/task/TID/stat; the busy share of both cores from
/proc/stat shows a client-bound run (server core not busy) or foreign load (core busier than
the processes on it).

    .venv/bin/python bench/batching.py                    # ~70 s on 2 cores
    .venv/bin/python bench/batching.py --quick            # ~30 s smoke run
    .venv/bin/python bench/batching.py --model-dims 512,2048,2048,10
    .venv/bin/python bench/batching.py --repeat 3 --settle 20  # shared machine: best of 3
    .venv/bin/python bench/batching.py --profile /tmp/prof  # + py-spy --gil at the top c

Needs wrk (`apt-get install -y wrk`) and taskset (util-linux); py-spy only for `--profile`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from common import fmt, markdown_table, pct

ROOT = Path(__file__).resolve().parent.parent
LUA = Path(__file__).resolve().parent / "wrk" / "infer.lua"
MODEL = "mlp"
SEED = 0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
STARTED = time.monotonic()


def progress(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# The model


def build_mlp(dims: list[int], seed: int = SEED) -> bytes:
    """`x` [-1, dims[0]] -> Gemm(+Relu) ... -> Gemm -> `y` [-1, dims[-1]], float32, opset 17."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, weights = [], []
    previous = "x"
    layers = len(dims) - 1
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(dims)):
        w = (rng.standard_normal((fan_in, fan_out)) * math.sqrt(2.0 / fan_in)).astype(np.float32)
        b = (rng.standard_normal(fan_out) * 0.01).astype(np.float32)
        weights += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        last = i == layers - 1
        gemm_out = "y" if last else f"gemm{i}"
        nodes.append(helper.make_node("Gemm", [previous, f"w{i}", f"b{i}"], [gemm_out],
                                      name=f"gemm{i}"))
        if not last:
            nodes.append(helper.make_node("Relu", [gemm_out], [f"relu{i}"], name=f"relu{i}"))
            previous = f"relu{i}"
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", dims[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", dims[-1]])],
        initializer=weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="bench/batching.py")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def ort_session(path: Path, threads: int) -> Any:
    """The same session options as adapters/onnx/session.py, so (a) is comparable to (b)/(c)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------------------------------------
# Results


@dataclass
class Result:
    setup: str
    concurrency: int | None  # None: in-process ONNX Runtime, one caller
    rps: float  # requests (rows, for in-process batches) per second
    p50_ms: float
    p99_ms: float
    cpu_us: float  # server (or process) CPU time per request/row
    loop_us: float | None = None  # ... of which the event-loop (main) thread
    worker_us: float | None = None  # ... of which every other thread (batch executors, ORT)
    server_busy: float | None = None  # server CPU seconds per wall second (1.0 = its core)
    client_busy: float | None = None  # wrk's CPU seconds per wall second
    server_core_busy: float | None = None  # the server's core, every process on it (/proc/stat)
    client_core_busy: float | None = None  # wrk's core, every process on it
    switches: float | None = None  # server context switches per request (all threads)
    rows_per_batch: float | None = None  # from the gateway's gateway_batch_size histogram
    errors: int = 0
    calls_per_s: float | None = None  # in-process batches: session.run calls per second


def measure_ort(session: Any, rows: int, width: int, seconds: float, warmup: float) -> Result:
    """Call `session.run` back to back on one thread; latency is per call."""
    x = np.random.default_rng(SEED + rows).standard_normal((rows, width)).astype(np.float32)
    feeds = {"x": x}
    end = time.perf_counter() + warmup
    while time.perf_counter() < end:
        session.run(["y"], feeds)
    times = []
    cpu0 = time.process_time()
    start = now = time.perf_counter()
    end = start + seconds
    while now < end:
        session.run(["y"], feeds)
        after = time.perf_counter()
        times.append(after - now)
        now = after
    cpu = time.process_time() - cpu0
    calls = len(times)
    wall = now - start
    p50, p99 = np.percentile(times, [50, 99]) * 1000
    return Result(setup=f"ONNX Runtime in-process, batch {rows}", concurrency=None,
                  rps=calls * rows / wall, p50_ms=float(p50), p99_ms=float(p99),
                  cpu_us=cpu / (calls * rows) * 1e6, calls_per_s=calls / wall,
                  server_busy=cpu / wall)


# ---------------------------------------------------------------------------------------------
# The gateway under test


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def py_spy() -> str | None:
    """py-spy from this venv (pip install py-spy), else from PATH."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def gateway_command() -> list[str]:
    script = Path(sys.executable).parent / "gateway"
    return [str(script)] if script.exists() else [sys.executable, "-m", "gateway"]


def write_config(path: Path, repository: Path, *, max_batch_size: int, delay_ms: float,
                 concurrent_batches: int, intra_op_threads: int) -> None:
    path.write_text(f"""\
# Generated by bench/batching.py
[server]
host = "127.0.0.1"
http_port = 8080          # overridden by --http-port
access_log = false
log_level = "warning"

[adapters.local]
kind = "onnx"
repository = "{repository}"
poll_interval_s = 3600.0  # no repository scans during a measurement
intra_op_threads = {intra_op_threads}

[adapters.local.batching]
max_batch_size = {max_batch_size}
max_queue_delay_ms = {delay_ms}
max_queue_size = 1024
concurrent_batches = {concurrent_batches}

[models.{MODEL}]
adapter = "local"
""")


class Server:
    def __init__(self, config: Path, cpu: int | None, log: Path,
                 args: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
        self._log_path = log
        self._log = log.open("wb")
        # taskset execs the gateway, so proc.pid is the server's pid.
        self.proc = subprocess.Popen(
            [*pin, *gateway_command(), "serve", "--config", str(config),
             "--http-port", str(self.port), *args],
            cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.proc.pid

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Poll GET /readyz until it answers 200; returns the seconds it took."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.base + "/readyz", timeout=1.0) as reply:
                    if reply.status == 200:
                        return time.monotonic() - start
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"gateway not ready after {timeout:.0f} s:\n{self.log()}")

    def cpu(self) -> tuple[float, float]:
        """(event-loop thread, all other threads) CPU seconds so far: utime + stime."""
        total = _stat_cpu(Path(f"/proc/{self.pid}/stat"))
        main = _stat_cpu(Path(f"/proc/{self.pid}/task/{self.pid}/stat"))
        return main, total - main

    def switches(self) -> int:
        """Voluntary + involuntary context switches of every thread so far."""
        total = 0
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                status = (task / "status").read_text()
            except FileNotFoundError:  # a thread that just ended
                continue
            total += sum(int(line.split()[1]) for line in status.splitlines()
                         if line.split(":")[0].endswith("ctxt_switches"))
        return total

    def batches(self) -> tuple[float, float] | None:
        """(rows, batches) the batcher ran so far, from /metrics; None if not exported."""
        try:
            with urllib.request.urlopen(self.base + "/metrics", timeout=5) as reply:
                text = reply.read().decode()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None
        found = {}
        for line in text.splitlines():
            for part in ("sum", "count"):
                if line.startswith(f"gateway_batch_size_{part}{{") and f'model="{MODEL}"' in line:
                    found[part] = found.get(part, 0.0) + float(line.rsplit(" ", 1)[1])
        return (found["sum"], found["count"]) if len(found) == 2 else None

    def log(self) -> str:
        self._log.flush()
        return self._log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def core_times(cores: set[int]) -> dict[int, tuple[int, int]]:
    """(busy, total) jiffies per core from /proc/stat; busy excludes idle and iowait."""
    times = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cores:
            numbers = [int(v) for v in values[:8]]
            times[int(name[3:])] = (sum(numbers) - numbers[3] - numbers[4], sum(numbers))
    return times


def core_busy(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]],
              core: int | None) -> float | None:
    if core is None or core not in before or core not in after:
        return None
    busy = after[core][0] - before[core][0]
    total = after[core][1] - before[core][1]
    return busy / total if total else None


def settle(cores: set[int], limit_s: float, idle_below: float = 0.15) -> None:
    """Wait (up to `limit_s`) until every core is below `idle_below` busy over half a second:
    on a shared machine, start measurements when other work has paused."""
    if limit_s <= 0 or not cores:
        return
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        before = core_times(cores)
        time.sleep(0.5)
        after = core_times(cores)
        if all((core_busy(before, after, c) or 0.0) < idle_below for c in cores):
            return
    progress(f"cores {sorted(cores)} still busy after {limit_s:.0f} s; measuring anyway")


def _stat_cpu(path: Path) -> float:
    # Fields after the ")" that ends the command name: utime and stime are fields 14 and 15.
    fields = path.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def check_answer(server: Server, body: bytes, expected: np.ndarray) -> None:
    request = urllib.request.Request(server.base + f"/v2/models/{MODEL}/infer", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        document = json.loads(reply.read())
    got = np.asarray(document["outputs"][0]["data"], dtype=np.float32).reshape(expected.shape)
    if not np.allclose(got, expected, rtol=1e-4, atol=1e-5):
        raise RuntimeError(f"gateway answered {got[:4]}..., ONNX Runtime says {expected[:4]}...")


# ---------------------------------------------------------------------------------------------
# wrk


def run_wrk(url: str, body_file: Path, connections: int, seconds: int,
            cpu: int | None) -> dict[str, float]:
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
    command = [*pin, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
               "--timeout", "30s", "-s", str(LUA), url, "--", str(body_file)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60,
                          check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    stats = {k: float(v) for k, v in (item.split("=") for item in line.split()[1:])}
    stats["client_cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime
                                                                  - before.ru_stime)
    stats["text"] = done.stdout  # type: ignore[assignment]
    return stats


def measure_gateway(server: Server, setup: str, url: str, body_file: Path, connections: int,
                    seconds: int, server_cpu: int | None, cpu: int | None) -> Result:
    cores = {c for c in (server_cpu, cpu) if c is not None}
    batches0 = server.batches()
    loop0, workers0 = server.cpu()
    switches0 = server.switches()
    cores0 = core_times(cores)
    start = time.monotonic()
    stats = run_wrk(url, body_file, connections, seconds, cpu)
    wall = time.monotonic() - start
    cores1 = core_times(cores)
    switches1 = server.switches()
    loop1, workers1 = server.cpu()
    batches1 = server.batches()
    rows_per_batch = None
    if batches0 and batches1 and batches1[1] > batches0[1]:
        rows_per_batch = (batches1[0] - batches0[0]) / (batches1[1] - batches0[1])
    requests = stats["requests"]
    errors = int(sum(stats[k] for k in stats if k.startswith("err_")))
    duration = stats["duration_us"] / 1e6
    per = 1e6 / max(requests, 1)
    loop, workers = (loop1 - loop0), (workers1 - workers0)
    return Result(setup=setup, concurrency=connections, rps=requests / duration,
                  p50_ms=stats["p50_us"] / 1000, p99_ms=stats["p99_us"] / 1000,
                  cpu_us=(loop + workers) * per, loop_us=loop * per, worker_us=workers * per,
                  server_busy=(loop + workers) / wall,
                  client_busy=stats["client_cpu_s"] / wall,
                  server_core_busy=core_busy(cores0, cores1, server_cpu),
                  client_core_busy=core_busy(cores0, cores1, cpu),
                  switches=(switches1 - switches0) / max(requests, 1),
                  rows_per_batch=rows_per_batch, errors=errors)


# ---------------------------------------------------------------------------------------------
# py-spy (optional)


def profile(server: Server, label: str, url: str, body_file: Path, connections: int,
            seconds: int, server_cpu: int | None, cpu: int | None, out_dir: Path) -> None:
    """One extra (unreported) wrk run with py-spy sampling the server; prints where the event
    loop's time goes. `--gil` keeps only samples of the thread holding the GIL, so the event
    loop's idle time (epoll, GIL released) and ONNX Runtime's compute (GIL released) drop out."""
    out_dir.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-") + f"-c{connections}"
    raw = out_dir / f"{slug}.txt"
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
    spy = subprocess.Popen(
        [*pin, str(py_spy()), "record", "-p", str(server.pid), "-d", str(seconds + 1),
         "-r", "250", "--gil", "--nonblocking", "--threads", "-f", "raw", "-o", str(raw)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.5)
    result = measure_gateway(server, label, url, body_file, connections, seconds, server_cpu,
                             cpu)
    _, err = spy.communicate(timeout=60)
    if not raw.exists():
        progress(f"py-spy failed: {err.decode(errors='replace')[-500:]}")
        return
    print(f"\n### py-spy --gil: {label}, c={connections}: {result.rps:,.0f} req/s while "
          f"sampled, event loop {result.loop_us:.0f} µs/req, workers {result.worker_us:.0f} "
          f"µs/req\n({raw})\n")
    print(summarize_profile(raw.read_text(), result.loop_us or 0.0))


#: Where the event loop's time goes, by the first rule whose pattern is in any frame of a sample.
CATEGORIES = (
    ("body -> numpy (read body, orjson.loads, v2 decode, to_array)",
     ("read_json", "parse_infer", "decode_tensor", "to_array", "loads (gateway/codecs")),
    ("reply (encode_infer, has_nonfinite, orjson.dumps, Response)",
     ("encode_infer", "has_nonfinite", "json_reply", "dumps (gateway/codecs")),
    ("pipeline + adapter + batcher.submit (checks, asyncio.timeout)",
     ("Pipeline.infer", "within_deadline", "OnnxAdapter.infer", "DynamicBatcher.submit",
      "Timeout.", "context_of")),
    ("batch completion on the loop (_execute, _dispatch, executor submit)",
     ("DynamicBatcher._", "ThreadPoolExecutor", "run_in_executor")),
    ("metrics (prometheus_client)", ("prometheus_client",)),
    ("aiohttp HTTP machinery (parse, route, write)", ("aiohttp/", "yarl/", "multidict/")),
)


def summarize_profile(text: str, loop_us: float, top: int = 15) -> str:
    """The main (event-loop) thread's GIL-holding samples by category, then by frame."""
    categories: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        thread, *frames = stack.split(";")
        threads[thread] += count
        if "MainThread" not in thread:
            continue
        frames = [_short(f) for f in frames]
        category = next((name for name, patterns in CATEGORIES
                         if any(p in f for f in frames for p in patterns)),
                        "event loop, asyncio and the rest")
        categories[category] += count
        self_time[frames[-1] if frames else "(no Python frame)"] += count
    main = sum(categories.values()) or 1
    lines = ["GIL-holding samples by thread: " + ", ".join(
        f"{thread.split(': ')[-1]} {n}" for thread, n in threads.most_common())]
    lines.append(f"event-loop thread, by category (share of its samples; x {loop_us:.0f} µs/req):")
    for name, n in categories.most_common():
        lines.append(f"  {100 * n / main:5.1f}%  {n / main * loop_us:5.0f} µs  {name}")
    lines.append("event-loop thread, top frames by self samples:")
    for frame, n in self_time.most_common(top):
        lines.append(f"  {100 * n / main:5.1f}%  {frame}")
    return "\n".join(lines)


def _short(frame: str) -> str:
    """`func (/long/path/site-packages/aiohttp/web.py:12)` -> `func (aiohttp/web.py:12)`."""
    match = re.match(r"(.*) \((.*):(\d+)\)$", frame)
    if not match:
        return frame
    name, path, line = match.groups()
    for marker in ("site-packages/", "/work/main/", str(ROOT) + "/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path}:{line})"


# ---------------------------------------------------------------------------------------------
# Report


def contended(r: Result) -> bool:
    """The server's core was busy with more than the server: the run lost CPU to other load."""
    return (r.server_busy is not None and r.server_core_busy is not None
            and r.server_core_busy > 0.97 and r.server_core_busy - r.server_busy > 0.08)


def table(results: list[Result]) -> str:
    head = ["setup", "c", "req/s", "p50 ms", "p99 ms", "CPU µs/req (loop + workers)",
            "rows/batch", "ctx sw/req", "server proc / core 0", "wrk proc / core 1"]
    rows = []
    for r in results:
        if r.concurrency is None:
            setup = r.setup
            if r.calls_per_s and r.rps != r.calls_per_s:
                setup += f", per row ({r.calls_per_s:,.0f} calls/s; p50/p99 per call)"
            rows.append([setup, "1 caller", f"{r.rps:,.0f}", f"{r.p50_ms:.3f}",
                         f"{r.p99_ms:.3f}", f"{r.cpu_us:.0f}", "-", "-", pct(r.server_busy),
                         "-"])
            continue
        errors = f" ({r.errors} errors)" if r.errors else ""
        rows.append([r.setup + errors, str(r.concurrency), f"{r.rps:,.0f}", f"{r.p50_ms:.2f}",
                     f"{r.p99_ms:.2f}",
                     f"{r.cpu_us:.0f} ({fmt(r.loop_us, '.0f')} + {fmt(r.worker_us, '.0f')})",
                     fmt(r.rows_per_batch, ".1f"), fmt(r.switches, ".1f"),
                     f"{pct(r.server_busy)} / {pct(r.server_core_busy)}"
                     + (" (!)" if contended(r) else ""),
                     f"{pct(r.client_busy)} / {pct(r.client_core_busy)}"])
    lines = markdown_table(head, rows)
    if any(contended(r) for r in results):
        lines.append("(!) core 0 was busy with other processes too: the server got less than "
                     "its core, so req/s is low; CPU µs/req is still valid")
    return "\n".join(lines)


def ratios(results: list[Result], off: str, on: list[str], concurrencies: list[int],
           ort1: Result, ortb: Result, batch: int) -> str:
    found = {(r.setup, r.concurrency): r for r in results}
    top = max(concurrencies)
    out = ["on/off req/s:"]
    for setup in on:
        cells = []
        for c in concurrencies:
            a, b = found.get((setup, c)), found.get((off, c))
            cells.append(f"c={c} {a.rps / b.rps:.2f}x" if a and b else f"c={c} -")
        a, b = found.get((setup, top)), found.get((off, top))
        verdict = ""
        if a and b:
            verdict = "met" if a.rps >= 4 * b.rps else "MISSED"
            verdict = f"   target >= 4x at c={top}: {verdict}"
        out.append(f"  {setup}: " + "  ".join(cells) + verdict)
    out.append("on/off by server CPU per request (1e6 / CPU µs: req/s with the core to itself, "
               "immune to other load):")
    for setup in on:
        cells = []
        for c in concurrencies:
            a, b = found.get((setup, c)), found.get((off, c))
            cells.append(f"c={c} {b.cpu_us / a.cpu_us:.2f}x" if a and b else f"c={c} -")
        out.append(f"  {setup}: " + "  ".join(cells))
    if 1 in concurrencies:
        out.append("p50 at c=1, on - off:")
        for setup in on:
            a, b = found.get((setup, 1)), found.get((off, 1))
            if a and b:
                d = a.p50_ms - b.p50_ms
                verdict = "met" if d <= 0.5 else "MISSED"
                out.append(f"  {setup}: {d:+.3f} ms ({a.p50_ms:.3f} vs {b.p50_ms:.3f})"
                           f"   target <= +0.5 ms: {verdict}")
    out.append(f"where the server's CPU goes at c={top} (µs per request, one core):")
    out.append(f"  ONNX Runtime alone: {ort1.cpu_us:.0f} per row at batch 1, {ortb.cpu_us:.1f} "
               f"per row at batch {batch}")
    for setup in [off, *on]:
        r = found.get((setup, top))
        if r and r.loop_us is not None and r.worker_us is not None:
            rows = f", {r.rows_per_batch:.1f} rows/batch" if r.rows_per_batch else ""
            out.append(f"  {setup}: {r.cpu_us:.0f} = {r.loop_us:.0f} event loop + "
                       f"{r.worker_us:.0f} workers; {r.switches:.1f} context switches{rows}")
    best = min((found[(s, top)] for s in on if (s, top) in found and found[(s, top)].loop_us),
               key=lambda r: r.loop_us or 0, default=None)
    if best and best.loop_us:
        ceiling = 1e6 / (best.loop_us + ortb.cpu_us)
        out.append(f"  => even with free batching, the event loop's {best.loop_us:.0f} µs per "
                   f"request caps one core at 1e6 / ({best.loop_us:.0f} + {ortb.cpu_us:.1f}) "
                   f"= {ceiling:,.0f} req/s")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, help="seconds per measurement (default 5; "
                        "--quick: 2); wrk takes whole seconds")
    parser.add_argument("--warmup", type=int, help="seconds of warm-up before each "
                        "measurement (default 1)")
    parser.add_argument("--model-dims", default="256,1024,1024,10",
                        help="layer widths, input first (default 256,1024,1024,10)")
    parser.add_argument("--quick", action="store_true",
                        help="short runs (2 s each), concurrent_batches 1 only")
    parser.add_argument("--concurrency", default="1,16,64", help="wrk connections (default "
                        "1,16,64)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per gateway point; the "
                        "fastest is reported, as other load only slows runs (default 1)")
    parser.add_argument("--settle", type=float, default=0.0, metavar="SECONDS",
                        help="before each measurement, wait up to SECONDS for both cores to be "
                        "idle (other work on a shared machine); default 0: do not wait")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--queue-delay-ms", type=float, default=0.0)
    parser.add_argument("--concurrent-batches", default="1,2",
                        help="batching-on variants to run (default 1,2)")
    parser.add_argument("--intra-op-threads", type=int, default=1)
    parser.add_argument("--server-cpu", type=int, default=0, help="core for the gateway and "
                        "the in-process ONNX Runtime runs (default 0)")
    parser.add_argument("--client-cpu", type=int, default=1, help="core for wrk (default 1)")
    parser.add_argument("--no-pin", action="store_true", help="do not use taskset")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="after the measurements of each gateway setup, one extra run at "
                        "the top concurrency under py-spy; raw stacks go to DIR")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write results here")
    args = parser.parse_args(argv)
    args.duration = args.duration or (2 if args.quick else 5)
    args.warmup = args.warmup or 1
    if args.quick:
        args.concurrent_batches = "1"
    return args


def preflight(args: argparse.Namespace) -> None:
    missing = []
    if not shutil.which("wrk"):
        missing.append("wrk is not installed; it is the load generator (a Python client would "
                       "be the bottleneck). Install it with: apt-get update && apt-get install "
                       "-y wrk  (or build https://github.com/wg/wrk)")
    if not args.no_pin and not shutil.which("taskset"):
        missing.append("taskset is not installed (util-linux); install it or pass --no-pin")
    if args.profile and not py_spy():
        missing.append("--profile needs py-spy: .venv/bin/pip install py-spy")
    if missing:
        for message in missing:
            print(f"bench/batching.py: {message}", file=sys.stderr)
        raise SystemExit(2)
    cores = os.sched_getaffinity(0)
    if not args.no_pin and not {args.server_cpu, args.client_cpu} <= cores:
        print(f"bench/batching.py: cores {args.server_cpu} and {args.client_cpu} are not both "
              f"available (have {sorted(cores)}); use --server-cpu/--client-cpu or --no-pin",
              file=sys.stderr)
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    preflight(args)
    dims = [int(d) for d in args.model_dims.split(",")]
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    batch = args.max_batch_size
    server_cpu = None if args.no_pin else args.server_cpu
    client_cpu = None if args.no_pin else args.client_cpu
    results: list[Result] = []

    with tempfile.TemporaryDirectory(prefix="bench-batching-") as tmp_name:
        tmp = Path(tmp_name)
        model_path = tmp / "models" / MODEL / "1" / "model.onnx"
        model_path.parent.mkdir(parents=True)
        model_path.write_bytes(build_mlp(dims))
        data = [round(float(v), 5) for v in np.random.default_rng(SEED).standard_normal(dims[0])]
        row = np.asarray([data], dtype=np.float32)
        body = json.dumps({"inputs": [{"name": "x", "shape": [1, dims[0]], "datatype": "FP32",
                                       "data": data}]}, separators=(",", ":")).encode()
        body_file = tmp / "body.json"
        body_file.write_bytes(body)
        progress(f"model {'→'.join(map(str, dims))} ({model_path.stat().st_size / 1e6:.1f} MB), "
                 f"body {len(body)} bytes")

        # (a) ONNX Runtime alone, on the server's core.
        if server_cpu is not None:
            os.sched_setaffinity(0, {server_cpu})
        pinned = {c for c in (server_cpu, client_cpu) if c is not None}
        session = ort_session(model_path, args.intra_op_threads)
        expected = session.run(["y"], {"x": row})[0]
        ort_runs: dict[int, list[Result]] = {1: [], batch: []}
        for _ in range(args.repeat):
            for rows in ort_runs:
                settle(pinned, args.settle)
                ort_runs[rows].append(measure_ort(session, rows, dims[0], args.duration,
                                                  args.warmup))
        ort1, ortb = (max(ort_runs[rows], key=lambda r: r.rps) for rows in (1, batch))
        results += [ort1, ortb]
        del session
        if client_cpu is not None:  # from here on this process only waits on wrk
            os.sched_setaffinity(0, {client_cpu})
        progress(f"ONNX Runtime: batch 1 {ort1.rps:,.0f} rows/s, batch {batch} "
                 f"{ortb.rps:,.0f} rows/s")

        # (b) and (c): the gateway.
        off = "gateway, batching off"
        setups = [(off, 1, 1)]
        for cb in (int(c) for c in args.concurrent_batches.split(",")):
            setups.append((f"gateway, batching on (cb={cb})", batch, cb))
        url_path = f"/v2/models/{MODEL}/infer"
        for label, max_batch, cb in setups:
            config = tmp / f"gateway-{max_batch}-{cb}.toml"
            write_config(config, tmp / "models", max_batch_size=max_batch,
                         delay_ms=args.queue_delay_ms, concurrent_batches=cb,
                         intra_op_threads=args.intra_op_threads)
            server = Server(config, server_cpu, tmp / f"gateway-{max_batch}-{cb}.log")
            try:
                ready_s = server.wait_ready()
                check_answer(server, body, expected[0])
                progress(f"{label}: ready in {ready_s:.1f} s (pid {server.pid}), answer checked")
                url = server.base + url_path
                for c in concurrencies:
                    run_wrk(url, body_file, c, args.warmup, client_cpu)
                    runs = []
                    for _ in range(args.repeat):
                        settle(pinned, args.settle)
                        r = measure_gateway(server, label, url, body_file, c, args.duration,
                                            server_cpu, client_cpu)
                        runs.append(r)
                        progress(f"  c={c}: {r.rps:,.0f} req/s, p50 {r.p50_ms:.2f} ms, "
                                 f"p99 {r.p99_ms:.2f} ms, {r.cpu_us:.0f} µs CPU/req, server "
                                 f"{pct(r.server_busy)} of core {fmt(server_cpu, 'd', '?')} "
                                 f"({pct(r.server_core_busy)} busy in all)")
                    # Other load only ever slows a run down: keep the fastest.
                    results.append(max(runs, key=lambda r: r.rps))
                if args.profile:
                    profile(server, label, url, body_file, max(concurrencies), args.duration,
                            server_cpu, client_cpu, args.profile)
            finally:
                server.stop()

    ons = [label for label, _, _ in setups[1:]]
    print(f"\nDynamic batching: MLP {'→'.join(map(str, dims))}, v2 JSON, 1 row per request, "
          f"max_batch_size {batch}, max_queue_delay_ms {args.queue_delay_ms:g}, "
          f"intra_op_threads {args.intra_op_threads}, {args.duration} s per run after "
          f"{args.warmup} s warm-up"
          f"{f', best of {args.repeat} runs' if args.repeat > 1 else ''}; "
          f"server on core {fmt(server_cpu, 'd', 'any')}, wrk -t1 on "
          f"core {fmt(client_cpu, 'd', 'any')}\n")
    print(table(results))
    print()
    print(ratios(results, off, ons, concurrencies, ort1, ortb, batch))
    if args.json:
        args.json.write_text(json.dumps({"dims": dims, "max_batch_size": batch,
                                         "duration_s": args.duration,
                                         "results": [asdict(r) for r in results]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
