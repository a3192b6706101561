"""Issue 9's goodput under overload: the demo model at c=64 (its capacity) and at c=2000 (far
past it), with a probe measuring what an admitted request and `/healthz` see meanwhile.

    .venv/bin/python bench/overload.py [--seconds 8] [--overload 2000] [--rounds 2]

The gateway runs on core 0 (`taskset`), wrk and the probe on core 1. wrk POSTs one row to
`/v1/models/demo:predict`; past the in-flight limits the gateway sheds with 503 before reading
the body, so "ok/s" (non-503 answers per second) is the goodput. The probe, on connections of
its own, sends 20 predicts and 20 `/healthz` per second and times each: "admitted p99" is over
its predicts that got 200. Targets: at c=2000 ok/s >= 0.8x the c=64 figure, admitted p99 <= 3x
the c=64 p99, `/healthz` p99 <= 50 ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from batching import Server, progress, run_wrk, settle  # noqa: E402
from common import DEMO_CONFIG, fmt, markdown_table  # noqa: E402

SERVER_CPU, CLIENT_CPU = 0, 1
BODY = json.dumps({"instances": [[1.0, 2.0, 3.0, 4.0]]}).encode()
PROBE_HZ = 20


@dataclass
class Probe:
    """Times a trickle of predicts and /healthz calls on their own connections."""

    base: str
    predicts: list[float] = field(default_factory=list)  # seconds, 200s only
    shed: int = 0
    health: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        period = 1.0 / PROBE_HZ
        while not self._stop.is_set():
            started = time.monotonic()
            self._time_predict()
            self._time_health()
            time.sleep(max(0.0, period - (time.monotonic() - started)))

    def stop(self) -> None:
        self._stop.set()

    def _time_predict(self) -> None:
        request = urllib.request.Request(self.base + "/v1/models/demo:predict", data=BODY,
                                         headers={"Content-Type": "application/json"})
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:
                reply.read()
            self.predicts.append(time.perf_counter() - started)
        except urllib.error.HTTPError as exc:
            if exc.code != 503:
                raise
            self.shed += 1

    def _time_health(self) -> None:
        started = time.perf_counter()
        with urllib.request.urlopen(self.base + "/healthz", timeout=30) as reply:
            reply.read()
        self.health.append(time.perf_counter() - started)


def p99(samples: list[float]) -> float | None:
    if len(samples) < 2:
        return None
    return statistics.quantiles(samples, n=100)[98] * 1000


@dataclass
class Row:
    concurrency: int
    rps: float
    ok_rps: float
    wrk_p99_ms: float
    admitted_p50_ms: float | None
    admitted_p99_ms: float | None
    probe_shed: int
    health_p99_ms: float | None
    cpu_us_per_ok: float


def measure(server: Server, body_file: Path, concurrency: int, seconds: int) -> Row:
    probe = Probe(server.base)
    thread = threading.Thread(target=probe.run, daemon=True)
    loop0, workers0 = server.cpu()
    thread.start()
    stats = run_wrk(server.base + "/v1/models/demo:predict", body_file, concurrency, seconds,
                    CLIENT_CPU)
    probe.stop()
    thread.join()
    loop1, workers1 = server.cpu()
    duration = stats["duration_us"] / 1e6
    ok = stats["requests"] - stats["err_status"]
    return Row(concurrency, stats["requests"] / duration, ok / duration, stats["p99_us"] / 1000,
               statistics.median(probe.predicts) * 1000 if probe.predicts else None,
               p99(probe.predicts), probe.shed, p99(probe.health),
               ((loop1 - loop0) + (workers1 - workers0)) / max(ok, 1) * 1e6)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--capacity", type=int, default=64, help="the baseline concurrency")
    parser.add_argument("--overload", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        config, body_file = Path(tmp) / "gateway.toml", Path(tmp) / "body.json"
        config.write_text(DEMO_CONFIG)
        body_file.write_bytes(BODY)
        server = Server(config, SERVER_CPU, Path(tmp) / "gateway.log")
        try:
            server.wait_ready()
            run_wrk(server.base + "/v1/models/demo:predict", body_file, 16, 2, CLIENT_CPU)
            for round_ in range(args.rounds):
                for concurrency in (args.capacity, args.overload):
                    settle({SERVER_CPU, CLIENT_CPU}, 10)
                    progress(f"round {round_ + 1}: c={concurrency}")
                    rows.append(measure(server, body_file, concurrency, args.seconds))
        finally:
            server.stop()
    print(report(rows, args.capacity, args.overload))
    return 0


def report(rows: list[Row], capacity: int, overload: int) -> str:
    lines = markdown_table(
        ["c", "req/s", "ok/s", "wrk p99 ms", "admitted p50 ms", "admitted p99 ms",
         "probe shed", "/healthz p99 ms", "CPU µs per ok"],
        [[str(r.concurrency), fmt(r.rps, ",.0f"), fmt(r.ok_rps, ",.0f"), fmt(r.wrk_p99_ms, ".1f"),
          fmt(r.admitted_p50_ms, ".1f"), fmt(r.admitted_p99_ms, ".1f"), str(r.probe_shed),
          fmt(r.health_p99_ms, ".1f"), fmt(r.cpu_us_per_ok, ".0f")] for r in rows])
    base = [r for r in rows if r.concurrency == capacity]
    over = [r for r in rows if r.concurrency == overload]
    for b, o in zip(base, over, strict=False):
        ratio = o.ok_rps / b.ok_rps
        p99_ratio = (o.admitted_p99_ms / b.admitted_p99_ms
                     if o.admitted_p99_ms and b.admitted_p99_ms else None)
        lines.append(f"\nc={overload} vs c={capacity}: ok/s {ratio:.2f}x (target >= 0.8x), "
                     f"admitted p99 {fmt(p99_ratio, '.2f')}x (target <= 3x), /healthz p99 "
                     f"{fmt(o.health_p99_ms, '.1f')} ms (target <= 50 ms)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
