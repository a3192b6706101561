#!/usr/bin/env python3
"""Worker processes (issue 10): `gateway serve --workers 1` vs `--workers 2` on this 2-core
machine, wrk at c=64 (one thread) on two paths:

  demo       POST /v1/models/demo:predict, one row, the ONNX demo model in every worker;
  tfserving  POST /v1/models/tfdemo:predict, proxied over gRPC to bench/proxy.py's TF Serving
             stand-in replaying its reply (`--standin --replay`: grpc.aio, the reply computed
             once), so the backend that shares the two cores costs as little as it can.

Nothing is pinned: the workers, wrk and (on the proxy path) the stand-in share both cores, as
they would on a host of their own. CPU per request is the gateway's: the supervisor and every
process below it (workers, their model-check servers) from /proc/PID/stat, over the requests
wrk completed; the stand-in's is shown apart, and "cores busy" adds up the gateway's, the
stand-in's and wrk's CPU over the run (2.00 is the whole machine). Each setup gets a fresh
gateway and a 2 s warm-up; the rounds interleave 1 and 2 workers, so drift on a shared machine
hits both alike. Target: 2 workers >= 1.4x the req/s of 1, CPU per request within +10 %.

    .venv/bin/python bench/workers.py [--seconds 10] [--rounds 2] [--connections 64]
    .venv/bin/python bench/workers.py --rounds 3 --settle 60  # a shared machine

Needs wrk (`apt-get install -y wrk`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from batching import Server, progress, run_wrk, settle  # noqa: E402
from common import DEMO_CONFIG, fmt, markdown_table, process_tree_cpu  # noqa: E402
from proxy import MODEL as TF_MODEL  # noqa: E402
from proxy import ROW, Proc, gateway_config, start_standin  # noqa: E402

CORES = {0, 1}
PATHS = {"demo": "/v1/models/demo:predict", "tfserving": f"/v1/models/{TF_MODEL}:predict"}


@dataclass
class Row:
    path: str
    workers: int
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float  # the gateway's, per request
    standin_cpu_us: float | None
    cores: float  # busy: the gateway's, the stand-in's and wrk's CPU over the run's time
    errors: int


def start(config: Path, workers: int, log: Path) -> Server:
    server = Server(config, None, log, ("--grpc-port", "0", "--workers", str(workers)))
    server.wait_ready()
    ready_in_a_row = 0
    while ready_in_a_row < 20:  # each on a new connection: every worker has loaded its models
        try:
            with urllib.request.urlopen(server.base + "/readyz", timeout=5) as reply:
                ready_in_a_row = ready_in_a_row + 1 if reply.status == 200 else 0
        except urllib.error.HTTPError:
            ready_in_a_row = 0
    return server


def measure(server: Server, path: str, workers: int, body_file: Path, connections: int,
            seconds: int, standin: Proc | None, settle_s: float) -> Row:
    url = server.base + PATHS[path]
    run_wrk(url, body_file, connections, 2, None)  # warm-up
    settle(CORES, settle_s)
    gateway0 = process_tree_cpu(server.pid)
    standin0 = standin.cpu()[1] if standin is not None else 0.0
    stats = run_wrk(url, body_file, connections, seconds, None)
    gateway1 = process_tree_cpu(server.pid)
    standin1 = standin.cpu()[1] if standin is not None else 0.0
    requests = max(stats["requests"], 1)
    duration = stats["duration_us"] / 1e6
    busy = gateway1 - gateway0 + standin1 - standin0 + stats["client_cpu_s"]
    return Row(path, workers, stats["requests"] / duration,
               stats["p50_us"] / 1000, stats["p99_us"] / 1000,
               (gateway1 - gateway0) / requests * 1e6,
               (standin1 - standin0) / requests * 1e6 if standin is not None else None,
               busy / duration, int(sum(v for k, v in stats.items() if k.startswith("err_"))))


def report(rows: list[Row]) -> str:
    lines = markdown_table(
        ["path", "workers", "req/s", "p50 ms", "p99 ms", "gateway CPU µs/req",
         "stand-in CPU µs/req", "cores busy", "errors"],
        [[r.path, str(r.workers), fmt(r.rps, ",.0f"), fmt(r.p50_ms, ".1f"), fmt(r.p99_ms, ".1f"),
          fmt(r.cpu_us, ".0f"), fmt(r.standin_cpu_us, ".0f"), fmt(r.cores, ".2f"),
          str(r.errors)] for r in rows])
    lines.append("")
    for one, two in zip(rows[::2], rows[1::2], strict=True):  # 1 then 2 workers, same path
        lines.append(f"{one.path}: 2 workers vs 1: req/s {two.rps / one.rps:.2f}x (target >= "
                     f"1.4x), CPU per request {100 * (two.cpu_us / one.cpu_us - 1):+.0f} % "
                     "(target <= +10 %)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--settle", type=float, default=10.0,
                        help="wait up to this long for idle cores before each measurement")
    args = parser.parse_args(argv)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        standin, standin_port = start_standin(None, tmp, replay=True)
        configs = {"demo": tmp / "demo.toml", "tfserving": tmp / "tfserving.toml"}
        configs["demo"].write_text(DEMO_CONFIG)
        configs["tfserving"].write_text(gateway_config(standin_port))
        bodies = {"demo": tmp / "demo.json", "tfserving": tmp / "tfserving.json"}
        bodies["demo"].write_text(json.dumps({"instances": [[1.0, 2.0, 3.0, 4.0]]}))
        bodies["tfserving"].write_text(json.dumps({"instances": [ROW]}))
        try:
            for round_ in range(args.rounds):
                for path in PATHS:
                    for workers in (1, 2):
                        progress(f"round {round_ + 1}: {path}, {workers} worker(s)")
                        server = start(configs[path], workers, tmp / f"{path}-{workers}.log")
                        try:
                            rows.append(measure(server, path, workers, bodies[path],
                                                args.connections, args.seconds,
                                                standin if path == "tfserving" else None,
                                                args.settle))
                        finally:
                            server.stop()
        finally:
            standin.stop()
    print(report(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
