"""Issue 5's cost of security: the same request with auth and the rate limiter off, with HS256
and with RS256 tokens (cached after the first verification) and the Redis GCRA limiter on,
with leases (the default) and without (`limiter-exact`: every check is a Redis call), and
with no Redis at all (`limiter-memory`: the same GCRA in the process's memory).

    .venv/bin/python bench/security.py [--seconds 6] [--concurrency 16,64] [--rounds 3]
                                       [--setups off,limiter-exact,limiter]

One gateway per setup on core 0 (`taskset`), wrk and redis-server on core 1; every request is
`POST /v1/models/demo:predict` with one row and the same bearer token (a hot client, as the
verified-token cache is meant for). The limit is high enough never to refuse, so each request
pays the full check: without leases one EVALSHA round trip (pipelined with its tick's
neighbours), with them mostly none. Prints req/s, p50, p99, the server's CPU per request (from
/proc/PID/stat) and the commands Redis processed per second while wrk ran (`INFO stats`
total_commands_processed, which counts the GET/SET inside each script too), and each setup's
ratio to "off" measured in the same run. Target: all on >= 0.95x all off.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from redis import Redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))
from batching import LUA, Server, progress  # noqa: E402
from common import DEMO_CONFIG  # noqa: E402

from tests.redis_server import running_redis  # noqa: E402

SERVER_CPU, CLIENT_CPU = 0, 1
BODY = {"instances": [[1.0, 2.0, 3.0, 4.0]]}
SETUPS = ("off", "hs256", "limiter-exact", "limiter", "limiter-memory", "hs256+limiter",
          "rs256+limiter")


AUTH = """
[auth]
enabled = true

[[auth.providers]]
name = "bench"
issuer = "bench"
audiences = ["gateway"]
{key}
"""

LIMITER = """
[redis]
url = "{redis}"
timeout_ms = 500
{leases}

[policies]
directory = "{policies}"
poll_interval_s = 3600.0
"""
MEMORY_LIMITER = """
[policies]
directory = "{policies}"
poll_interval_s = 3600.0
"""

LIMITS = """
[[limits]]
name = "bench"
models = ["demo"]
key = "sub"
rate = 1000000
period_s = 1
burst = 1000000
"""


@dataclass
class Row:
    setup: str
    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float
    errors: int
    redis_per_s: float  # commands Redis processed per second during the run


def write_setups(tmp: Path, redis_url: str) -> dict[str, tuple[Path, str]]:
    """Each setup's config file and the Authorization header value its requests carry."""
    secret = os.urandom(48)
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = tmp / "rs256.pem"
    public.write_bytes(private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    policies = tmp / "policies"
    policies.mkdir()
    (policies / "limits.toml").write_text(LIMITS)
    claims = {"iss": "bench", "aud": "gateway", "sub": "bench-client", "scope": "predict",
              "iat": int(time.time()), "exp": int(time.time()) + 3600}
    os.environ["BENCH_JWT_SECRET_TEXT"] = secret.hex()
    hs_auth = AUTH.format(key='algorithms = ["HS256"]\nsecret_env = "BENCH_JWT_SECRET_TEXT"')
    rs_auth = AUTH.format(key=f'algorithms = ["RS256"]\nkey_file = "{public}"')
    limiter = LIMITER.format(redis=redis_url, policies=policies, leases="")
    exact = LIMITER.format(redis=redis_url, policies=policies, leases="lease_max_share = 0")
    hs_token = jwt.encode(claims, secret.hex().encode(), algorithm="HS256")
    setups = {"off": (DEMO_CONFIG, ""),
              "hs256": (DEMO_CONFIG + hs_auth, hs_token),
              "limiter-exact": (DEMO_CONFIG + exact, ""),
              "limiter": (DEMO_CONFIG + limiter, ""),
              "limiter-memory": (DEMO_CONFIG + MEMORY_LIMITER.format(policies=policies), ""),
              "hs256+limiter": (DEMO_CONFIG + hs_auth + limiter, hs_token),
              "rs256+limiter": (DEMO_CONFIG + rs_auth + limiter,
                                jwt.encode(claims, private, algorithm="RS256"))}
    written = {}
    for name, (text, token) in setups.items():
        config = tmp / f"{name}.toml"
        config.write_text(text)
        written[name] = (config, token)
    return written


def wrk(url: str, body: Path, headers: Path | None, connections: int,
        seconds: int) -> dict[str, float]:
    command = ["taskset", "-c", str(CLIENT_CPU), "wrk", "-t1", f"-c{connections}",
               f"-d{seconds}s", "--latency", "-s", str(LUA), url, "--", str(body)]
    if headers is not None:
        command.append(str(headers))
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60,
                          check=False)
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return {k: float(v) for k, v in (item.split("=") for item in line.split()[1:])}


def measure(server: Server, setup: str, body: Path, headers: Path | None, connections: int,
            seconds: int, redis: Redis) -> Row:
    url = server.base + "/v1/models/demo:predict"
    wrk(url, body, headers, connections, 2)  # warm-up: connections, caches, the JIT-less loop
    loop0, workers0 = server.cpu()
    commands0 = _commands(redis)
    stats = wrk(url, body, headers, connections, seconds)
    commands1 = _commands(redis)
    loop1, workers1 = server.cpu()
    requests = max(stats["requests"], 1)
    errors = int(sum(v for k, v in stats.items() if k.startswith("err_")))
    duration_s = stats["duration_us"] / 1e6
    return Row(setup, connections, requests / duration_s,
               stats["p50_us"] / 1000, stats["p99_us"] / 1000,
               ((loop1 - loop0) + (workers1 - workers0)) * 1e6 / requests, errors,
               (commands1 - commands0 - 1) / duration_s)  # less our own INFO


def _commands(redis: Redis) -> int:
    return int(redis.info("stats")["total_commands_processed"])


def check(server: Server, token: str) -> None:
    """The setup answers this request with 200 (a 401 or 429 would measure the wrong path)."""
    import urllib.request

    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(server.base + "/v1/models/demo:predict",
                                     data=json.dumps(BODY).encode(), headers=headers)
    with urllib.request.urlopen(request, timeout=10) as reply:
        if reply.status != 200 or "predictions" not in json.loads(reply.read()):
            raise RuntimeError(f"unexpected reply {reply.status}")


def table(rows: list[Row]) -> str:
    off = {r.concurrency: r for r in rows if r.setup == "off"}
    exact = {r.concurrency: r for r in rows if r.setup == "limiter-exact"}
    lines = ["| setup | c | req/s | vs off | p50 ms | p99 ms | CPU µs/req | CPU vs off "
             "| Redis cmd/s | vs exact | errors |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        base = off.get(r.concurrency)
        versus = exact.get(r.concurrency)
        fewer = (f"{versus.redis_per_s / r.redis_per_s:,.0f}x fewer"
                 if versus and r.setup != "limiter-exact" and "limiter" in r.setup
                 and r.redis_per_s > 0 else "")
        lines.append(f"| {r.setup} | {r.concurrency} | {r.rps:,.0f} "
                     f"| {f'{r.rps / base.rps:.2f}x' if base else '-'} "
                     f"| {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.cpu_us:.0f} "
                     f"| {f'{base.cpu_us / r.cpu_us:.2f}x' if base else '-'} "
                     f"| {r.redis_per_s:,.0f} | {fewer} | {r.errors} |")
    return "\n".join(lines)


def median_rows(runs: list[Row]) -> Row:
    first = runs[0]
    return Row(first.setup, first.concurrency, statistics.median(r.rps for r in runs),
               statistics.median(r.p50_ms for r in runs),
               statistics.median(r.p99_ms for r in runs),
               statistics.median(r.cpu_us for r in runs), sum(r.errors for r in runs),
               statistics.median(r.redis_per_s for r in runs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--concurrency", default="16,64")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds; the table shows medians")
    parser.add_argument("--setups", default=",".join(SETUPS),
                        help=f"a subset of {', '.join(SETUPS)}")
    args = parser.parse_args(argv)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    chosen = [name for name in SETUPS if name in args.setups.split(",")]
    results: dict[tuple[str, int], list[Row]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-security-") as tmp_name, running_redis() \
            as redis:
        tmp = Path(tmp_name)
        body = tmp / "body.json"
        body.write_text(json.dumps(BODY))
        setups = write_setups(tmp, redis.url)
        servers: dict[str, tuple[Server, Path | None]] = {}
        counter = Redis.from_url(redis.url)
        try:
            for name in chosen:
                config, token = setups[name]
                server = Server(config, SERVER_CPU, tmp / f"{name}.log")
                server.wait_ready()
                check(server, token)
                headers = None
                if token:
                    headers = tmp / f"{name}.headers"
                    headers.write_text(f"Authorization: Bearer {token}\n")
                servers[name] = (server, headers)
            for round_number in range(args.rounds):
                for connections in concurrencies:
                    for name in chosen:  # interleaved, so drift hits every setup alike
                        server, headers = servers[name]
                        progress(f"round {round_number + 1}: {name} c={connections}")
                        row = measure(server, name, body, headers, connections, args.seconds,
                                      counter)
                        results.setdefault((name, connections), []).append(row)
        finally:
            counter.close()
            for server, _ in servers.values():
                server.stop()
    rows = [median_rows(results[(name, c)]) for c in concurrencies for name in chosen]
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
