#!/usr/bin/env python3
"""Tracing overhead: requests per second and server CPU per request with tracing off, and on
at 100% sampling exporting every span over OTLP/gRPC to a local receiver (and, for scale, at
10%, 1% and 0% sampling; with per-step spans; without the tail rules), and whether errors are
kept whatever the ratio.

The gateway serves the repository's `demo` model in-process (`POST /v2/models/demo/infer`,
one row, v2 JSON: the cheapest request, so the relative cost of tracing is the largest) with
access logging off. It runs pinned to core 0 (`taskset -c 0`, every thread: the event loop,
the batch executor and the span exporter); wrk and the OTLP receiver run on core 1. The
receiver (this script with `--receiver PORT`) parses every export and counts its spans, so a
run that dropped spans shows. Modes are interleaved and repeated; medians are reported. Server
CPU per request comes from /proc/PID/stat (utime + stime over the measured window); its
ratio (off / on) is the throughput ratio a CPU-bound server would see, and it is steadier than
req/s when other work shares the machine.

After each traced run, ERRORS requests fail on purpose (a deadline already past: 504) with a
`traceparent` the ratio would drop (flag 00, trace id's low bits at the top); the receiver
reports which of their traces arrived: `errors kept` must be all of them in every mode that
keeps errors (`keep_errors`, the default). Their spans are not counted in spans/req.

    .venv/bin/python bench/tracing.py                 # 3 rounds x 8 s per mode, ~2.5 min
    .venv/bin/python bench/tracing.py --rounds 1 --seconds 4
    .venv/bin/python bench/tracing.py --json /tmp/tracing.json
    .venv/bin/python bench/tracing.py --modes off,on-100%,on-10%   # the issue-13 targets
    .venv/bin/python bench/tracing.py --baseline /tmp/old  # + tracing off in another checkout
                                                             # (e.g. `git worktree add` of the
                                                             # commit before tracing)

Needs wrk (`apt-get install -y wrk`) and taskset (util-linux).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from common import DEMO_CONFIG  # bench/ is on sys.path when this runs as a script

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "bench" / "wrk" / "infer.lua"
BODY = b'{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}'
TICKS = os.sysconf("SC_CLK_TCK")
BASELINE = "baseline"  # tracing off, in the --baseline checkout
TAIL = "slow_ms = 100\n"  # keep_errors is on by default
MODES = {  # name -> the gateway's environment, its [tracing] table
    "off": ({}, ""),
    "on-100%": ({"OTEL_TRACES_SAMPLER": "always_on"}, TAIL),
    "on-10%": ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}, TAIL),
    "on-1%": ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"}, TAIL),
    # errors and slow requests only: the price of recording every request for the tail rules
    "on-0%": ({"OTEL_TRACES_SAMPLER": "always_off"}, TAIL),
    # the head decision alone (no tail rules): an unsampled request records nothing
    "head-10%": ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"},
                 "keep_errors = false\n"),
    # every step a span, as issue 6 traced (`detail = "steps"`)
    "steps-100%": ({"OTEL_TRACES_SAMPLER": "always_on"}, 'detail = "steps"\n' + TAIL),
}
ERRORS = 20
#: the failing requests' trace ids: this prefix, the run's number, low 64 bits no ratio keeps
ERROR_PREFIX = "e" * 8
RUNS = iter(range(1 << 32))


@dataclass
class Run:
    mode: str
    rps: float
    cpu_us: float  # server CPU (all threads) per request
    p50_ms: float
    p99_ms: float
    spans_per_request: float  # as counted by the receiver
    errors_kept: int  # of ERRORS failing requests the ratio would drop; -1: not traced


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as reply:
        return str(reply.read().decode())


def wait_for(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            get(url)
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def core_busy(seconds: float) -> list[float]:
    """Busy share of each core over `seconds` (idle and iowait excluded), from /proc/stat."""
    def sample() -> list[tuple[int, int]]:
        times = []
        for line in Path("/proc/stat").read_text().splitlines():
            name, *values = line.split()
            if name.startswith("cpu") and name[3:].isdigit():
                numbers = [int(v) for v in values[:8]]
                times.append((sum(numbers) - numbers[3] - numbers[4], sum(numbers)))
        return times

    before = sample()
    time.sleep(seconds)
    return [(b1 - b0) / max(1, t1 - t0) for (b0, t0), (b1, t1) in zip(before, sample(),
                                                                       strict=True)]


def settle(limit_s: float) -> None:
    """On a shared machine, start measuring once other work pauses (every core under 15% busy
    for half a second), or after `limit_s` anyway."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and max(core_busy(0.5)) >= 0.15:
        pass


def wrk(url: str, body: Path, connections: int, seconds: float) -> dict[str, float]:
    out = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency",
         "-s", str(LUA), url, "--", str(body)], capture_output=True, text=True, check=True)
    line = next(x for x in out.stdout.splitlines() if x.startswith("BENCH "))
    fields = {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", line)}
    errors = sum(v for k, v in fields.items() if k.startswith("err_"))
    if errors:
        raise RuntimeError(f"wrk saw {errors:.0f} errors: {line}")
    return fields


def measure(mode: str, workdir: Path, receiver: int, args: argparse.Namespace) -> Run:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    traced = mode in MODES and mode != "off"
    config = workdir / "gateway.toml"
    if traced:
        variables, table = MODES[mode]
        env |= {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver}", **variables}
        config = workdir / f"gateway-{mode.replace('%', '')}.toml"
        config.write_text(f"{(workdir / 'gateway.toml').read_text()}\n[tracing]\n{table}")
    log = (workdir / "gateway.log").open("ab")
    gateway = subprocess.Popen(
        ["taskset", "-c", "0", sys.executable, "-m", "gateway", "serve", "--config",
         str(config), "--http-port", str(port)],
        cwd=ROOT if mode in MODES else args.baseline, env=env, stdout=log, stderr=log,
        start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(base + "/readyz", gateway)
        url = base + "/v2/models/demo/infer"
        settle(args.settle)
        wrk(url, workdir / "body.json", args.connections, args.warmup)
        spans_before = int(get(f"http://127.0.0.1:{receiver + 1}/"))
        cpu_before = cpu_seconds(gateway.pid)
        result = wrk(url, workdir / "body.json", args.connections, args.seconds)
        cpu = cpu_seconds(gateway.pid) - cpu_before
        run = next(RUNS)
        failing = [f"{ERROR_PREFIX}{run:08x}{2**64 - 1 - n:016x}" for n in range(ERRORS)]
        for trace_id in failing if traced else ():
            fail(url, trace_id)
    finally:
        gateway.send_signal(signal.SIGTERM)  # flushes the spans still queued
        gateway.wait(30)
        log.close()
    requests = result["requests"]
    spans = int(get(f"http://127.0.0.1:{receiver + 1}/")) - spans_before
    kept = sum(get(f"http://127.0.0.1:{receiver + 1}/{t}") == "1" for t in failing
               ) if traced else -1
    return Run(mode, requests / result["duration_us"] * 1e6, cpu / requests * 1e6,
               result["p50_us"] / 1000, result["p99_us"] / 1000, spans / requests, kept)


def fail(url: str, trace_id: str) -> None:
    """A request that fails (504: its deadline passed before the model ran) in a trace the
    ratio would not keep."""
    request = urllib.request.Request(url, BODY, {
        "Content-Type": "application/json", "X-Request-Timeout-Ms": "0.000001",
        "traceparent": f"00-{trace_id}-00f067aa0ba902b7-00"})
    try:
        urllib.request.urlopen(request, timeout=30).close()
    except urllib.error.HTTPError as error:
        if error.code == 504:
            return
        raise
    raise RuntimeError("a request meant to fail succeeded")


# ---------------------------------------------------------------------------------------------
# The receiver: OTLP/gRPC TraceService on PORT, its span count as text on http://:PORT+1/


async def receive(port: int) -> None:
    import grpc
    from aiohttp import web
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    count = [0]
    failed: set[str] = set()  # the trace ids of the failing requests (ERROR_PREFIX)
    prefix = bytes.fromhex(ERROR_PREFIX)

    class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
        async def Export(self, request: trace_service_pb2.ExportTraceServiceRequest,
                         context: grpc.aio.ServicerContext
                         ) -> trace_service_pb2.ExportTraceServiceResponse:
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    for span in scope.spans:
                        if span.trace_id.startswith(prefix):
                            failed.add(span.trace_id.hex())
                        else:
                            count[0] += 1
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    app = web.Application()

    async def spans(_: web.Request) -> web.Response:
        return web.Response(text=str(count[0]))

    async def kept(request: web.Request) -> web.Response:
        return web.Response(text="1" if request.match_info["trace"] in failed else "0")

    app.router.add_get("/", spans)
    app.router.add_get("/{trace}", kept)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port + 1).start()
    await asyncio.Event().wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--settle", type=float, default=15,
                        help="seconds to wait at most for idle cores before each mode's run")
    parser.add_argument("--modes", type=lambda text: text.split(","), default=list(MODES),
                        help=f"comma-separated, of: {', '.join(MODES)} (default: all)"
                        .replace("%", "%%"))  # argparse formats help strings
    parser.add_argument("--json", type=Path)
    parser.add_argument("--baseline", type=Path,
                        help="also run, with tracing off, the gateway of this checkout")
    parser.add_argument("--receiver", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receiver:
        asyncio.run(receive(args.receiver))
        return 0

    with tempfile.TemporaryDirectory(prefix="bench-tracing-") as tmp:
        workdir = Path(tmp)
        (workdir / "body.json").write_bytes(BODY)
        (workdir / "gateway.toml").write_text("# Generated by bench/tracing.py\n" + DEMO_CONFIG)
        port = free_port()
        receiver = subprocess.Popen(
            ["taskset", "-c", "1", sys.executable, __file__, "--receiver", str(port)],
            start_new_session=True)
        try:
            wait_for(f"http://127.0.0.1:{port + 1}/", receiver)
            modes = [*args.modes, *([BASELINE] if args.baseline else [])]
            runs = [measure(mode, workdir, port, args)
                    for _ in range(args.rounds) for mode in modes]
        finally:
            receiver.terminate()
            receiver.wait(10)
        dropped = (workdir / "gateway.log").read_text().count("Queue full")
    report(runs, dropped, args)
    print("\nPer request, in-process (bench/tracing_parts.py, pinned to the gateway's core):\n")
    subprocess.run(["taskset", "-c", "0", sys.executable, str(ROOT / "bench" / "tracing_parts.py")],
                   check=True)
    return 0


def report(runs: list[Run], dropped: int, args: argparse.Namespace) -> None:
    medians = {}
    for mode in dict.fromkeys(r.mode for r in runs):
        mine = [r for r in runs if r.mode == mode]
        medians[mode] = {field: statistics.median(getattr(r, field) for r in mine)
                         for field in ("rps", "cpu_us", "p50_ms", "p99_ms", "spans_per_request")}
        medians[mode]["errors_kept"] = min(r.errors_kept for r in mine)
    off = medians["off"] if "off" in medians else next(iter(medians.values()))
    print(f"demo model, v2 JSON, wrk -c{args.connections}, {args.rounds} x {args.seconds:g} s "
          f"per mode, medians; 'Queue full' (dropped spans) log lines: {dropped}\n")
    print("| tracing | req/s | req/s vs off | server CPU µs/req | CPU-bound req/s vs off "
          f"| p50 ms | p99 ms | spans/req exported | errors kept (of {ERRORS}, worst run) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for mode, m in medians.items():
        kept = "-" if m["errors_kept"] < 0 else f"{m['errors_kept']:.0f}"
        print(f"| {mode} | {m['rps']:.0f} | {m['rps'] / off['rps']:.2f} | {m['cpu_us']:.0f} | "
              f"{off['cpu_us'] / m['cpu_us']:.2f} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | "
              f"{m['spans_per_request']:.2f} | {kept} |")
    if args.json:
        args.json.write_text(json.dumps({"runs": [asdict(r) for r in runs],
                                         "medians": medians, "dropped_lines": dropped},
                                        indent=2))


if __name__ == "__main__":
    sys.exit(main())
