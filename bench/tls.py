"""Issue 12's cost of TLS on the HTTP door: the same request over plaintext and over HTTPS, on
kept-alive connections and with `Connection: close` (a new connection, and for HTTPS a full
handshake, per request).

    .venv/bin/python bench/tls.py [--seconds 6] [--concurrency 16,64] [--rounds 3]

One gateway per scheme on core 0 (`taskset`), wrk on core 1; every request is
`POST /v1/models/demo:predict` with one row. Certificates come from trustme (an ECDSA P-256
server key, what cert-manager issues by default is RSA 2048: a handshake costs more there).
Prints req/s, p50, p99 and the server's CPU per request, medians of interleaved rounds.
"""

from __future__ import annotations

import argparse
import json
import ssl
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import trustme

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))
from batching import Server, progress  # noqa: E402
from common import DEMO_CONFIG  # noqa: E402
from security import BODY, SERVER_CPU, Row, wrk  # noqa: E402

SETUPS = ("http", "https", "http-close", "https-close")


def write_configs(tmp: Path) -> tuple[dict[str, Path], ssl.SSLContext]:
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    issued.private_key_pem.write_to_path(str(tmp / "key.pem"))
    issued.cert_chain_pems[0].write_to_path(str(tmp / "cert.pem"))
    plain, tls = tmp / "http.toml", tmp / "https.toml"
    plain.write_text(DEMO_CONFIG)
    tls.write_text(DEMO_CONFIG.replace("[adapters.local]", f'[server.tls]\ncert_file = '
                   f'"{tmp / "cert.pem"}"\nkey_file = "{tmp / "key.pem"}"\n\n[adapters.local]'))
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return {"http": plain, "https": tls}, client


def wait_ready(base: str, context: ssl.SSLContext, server: Server) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        request = urllib.request.Request(base + "/v1/models/demo:predict",
                                         data=json.dumps(BODY).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=2, context=context) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"gateway not ready:\n{server.log()}")


def measure(server: Server, setup: str, body: Path, headers: Path | None, connections: int,
            seconds: int) -> Row:
    url = server.base + "/v1/models/demo:predict"
    wrk(url, body, headers, connections, 2)  # warm-up
    before = sum(server.cpu())
    stats = wrk(url, body, headers, connections, seconds)
    requests = max(stats["requests"], 1)
    return Row(setup, connections, requests / (stats["duration_us"] / 1e6),
               stats["p50_us"] / 1000, stats["p99_us"] / 1000,
               (sum(server.cpu()) - before) * 1e6 / requests,
               int(sum(v for k, v in stats.items() if k.startswith("err_"))), 0.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--concurrency", default="16,64")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    results: dict[tuple[str, int], list[Row]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as tmp_name:
        tmp = Path(tmp_name)
        body, close = tmp / "body.json", tmp / "close.headers"
        body.write_text(json.dumps(BODY))
        close.write_text("Connection: close\n")
        configs, context = write_configs(tmp)
        servers: dict[str, Server] = {}
        try:
            for scheme, config in configs.items():
                server = servers[scheme] = Server(config, SERVER_CPU, tmp / f"{scheme}.log")
                server.base = server.base.replace("http", scheme, 1)
                wait_ready(server.base, context, server)
            for round_number in range(args.rounds):
                for connections in concurrencies:
                    for setup in SETUPS:
                        scheme, _, closing = setup.partition("-")
                        progress(f"round {round_number + 1}: {setup} c={connections}")
                        row = measure(servers[scheme], setup, body,
                                      close if closing else None, connections, args.seconds)
                        results.setdefault((setup, connections), []).append(row)
        finally:
            for server in servers.values():
                server.stop()
    print("| setup | c | req/s | p50 ms | p99 ms | CPU µs/req | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for connections in concurrencies:
        for setup in SETUPS:
            runs = results[(setup, connections)]
            print(f"| {setup} | {connections} | {statistics.median(r.rps for r in runs):,.0f} "
                  f"| {statistics.median(r.p50_ms for r in runs):.2f} "
                  f"| {statistics.median(r.p99_ms for r in runs):.2f} "
                  f"| {statistics.median(r.cpu_us for r in runs):.0f} "
                  f"| {sum(r.errors for r in runs)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
