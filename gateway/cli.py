"""`gateway serve`, `gateway check-config` and `gateway token`."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import logging
import signal
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from adapters.onnx.checks import label_problems
from gateway import __version__
from gateway.auth.keys import HMAC_ALGORITHMS, secret_from_env
from gateway.auth.mint import mint_token
from gateway.config import (
    MAX_WORKERS,
    WORKERS_AUTO,
    ConfigError,
    GatewayConfig,
    cores_available,
    load_config,
)
from gateway.policy.loader import compile_policy, read_directory
from gateway.policy.model import Policy
from gateway.ports import PortInUse, claim_ports
from gateway.ratelimit.limits_config import memory_notice
from gateway.supervisor import Supervisor
from gateway.telemetry.logs import configure_logging
from gateway.tls.config import plaintext_warning
from gateway.worker import WorkerLink, become_worker

GC_YOUNG_THRESHOLD = 10_000  # allocations between collections of the youngest generation
log = logging.getLogger("gateway")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", type=Path, default=Path("gateway.toml"), metavar="FILE",
                       help="the gateway's TOML config (default: ./gateway.toml; every key is "
                       "in docs/configuration.md); relative paths in it are relative to it")
    serve.add_argument("--http-port", type=int, help="overrides [server] http_port")
    serve.add_argument("--grpc-port", type=int, help="overrides [server] grpc_port")
    serve.add_argument("--workers", type=_workers, metavar="N|auto",
                       help="overrides [server] workers: processes serving both ports")
    # Set by the supervisor for the workers it starts (gateway/worker.py).
    serve.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--channel-fd", type=int, help=argparse.SUPPRESS)
    check = commands.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("config", type=Path, metavar="FILE",
                       help="the gateway's TOML config, checked with its policy files and "
                       "model repositories")
    token = commands.add_parser("token", help="mint a development token and print it")
    token.add_argument("--secret-env", required=True, metavar="VAR",
                       help="environment variable holding the provider's HMAC secret")
    token.add_argument("--sub", required=True, help="the subject (who the token is for)")
    token.add_argument("--scope", default="predict", help="space-separated scopes")
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")
    token.add_argument("--issuer", default="demo-issuer")
    token.add_argument("--audience", default="gateway")
    token.add_argument("--alg", default="HS256", choices=HMAC_ALGORITHMS)
    args = parser.parse_args(argv)
    if args.command == "serve" and (args.worker is None) != (args.channel_fd is None):
        parser.error("--worker and --channel-fd come together, from the supervisor")
    if args.command == "token":
        return _token(args)

    try:
        config = load_config(args.config)
        policy = (compile_policy(read_directory(config.policies.directory), config.adapters,
                                 config.policies.directory)
                  if config.policies.directory else Policy())
    except ConfigError as exc:
        print(f"gateway: invalid config: {exc}", file=sys.stderr)
        return 2
    problems = label_problems(config)
    exposed = plaintext_warning(config.server.host, config.server.tls)
    if args.command == "check-config":
        if exposed:
            print(f"gateway: warning: {exposed}", file=sys.stderr)
        if per_process := _per_process(config, policy):
            print(f"gateway: warning: {per_process}", file=sys.stderr)
        for problem in problems:  # fail the rollout: `serve` would answer those labels 404
            print(f"gateway: invalid config: {problem}", file=sys.stderr)
        if problems:
            return 2
        print(f"{args.config}: ok ({len(config.adapters)} adapters, {len(config.models)} "
              f"configured models, {len(policy.routes)} policy routes)")
        return 0
    overrides = {k: v for k, v in (("http_port", args.http_port), ("grpc_port", args.grpc_port),
                                   ("workers", args.workers)) if v is not None}
    config = dataclasses.replace(config, server=dataclasses.replace(config.server, **overrides))
    if args.worker is not None:  # the supervisor claimed the ports
        configure_logging(config.server.log_level, args.worker, config.server.log_format)
        _run(serve_forever(config, become_worker(args.worker, args.channel_fd)))
        return 0
    configure_logging(config.server.log_level, log_format=config.server.log_format)
    for problem in problems:  # the repository may catch up: serve, and say so once
        log.warning("config: %s; serving anyway: the label answers 404 until the "
                    "repository serves that version", problem)
    if exposed:
        log.warning("%s", exposed)
    if per_process := _per_process(config, policy):
        log.warning("config: %s", per_process)
    try:
        claimed = claim_ports(config.server)
    except PortInUse as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    with claimed:
        config = claimed.apply(config)
        if config.server.workers > 1:
            return Supervisor(config).run()
        _run(serve_forever(config))
    return 0


def _per_process(config: GatewayConfig, policy: Policy) -> str | None:
    """Limits never go silently unenforced: where they are only per process, say so."""
    if not policy.limits:
        return None
    return memory_notice(config.limits, config.redis, config.server.workers)


def _workers(value: str) -> int:
    if value == WORKERS_AUTO:
        return cores_available()
    if not value.isdigit() or not 1 <= int(value) <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"expected 1 to {MAX_WORKERS} or {WORKERS_AUTO!r}, "
                                         f"got {value!r}")
    return int(value)


def _token(args: argparse.Namespace) -> int:
    try:
        print(mint_token(secret_from_env(args.secret_env), subject=args.sub, scope=args.scope,
                         ttl_s=args.ttl, issuer=args.issuer, audience=args.audience,
                         algorithm=args.alg, now=time.time()))
    except ValueError as exc:
        print(f"gateway token: {exc}", file=sys.stderr)
        return 2
    return 0


def _run(main_coroutine: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:  # uvloop is optional on platforms it does not support
        asyncio.run(main_coroutine)
        return
    uvloop.run(main_coroutine)


async def serve_forever(config: GatewayConfig, worker: WorkerLink | None = None) -> None:
    from gateway.app import Gateway  # heavy imports (ONNX Runtime) only when serving
    from gateway.rest.connections import start_http
    from gateway.shutdown import ShutdownSignals, drain_and_stop

    gateway = Gateway(config, worker)
    refused = gateway.metrics.connections_refused
    runner, site = await start_http(gateway.http_app(), config.server,
                                    lambda reason: refused.labels(reason).inc())
    server = runner.server
    gateway.metrics.watch_connections(lambda: len(server.connections) if server else 0)
    tls = "s" if config.server.tls is not None else ""
    for host, port in site.addresses():
        log.info("listening on http%s://%s:%d", tls, host, port)
    grpc_server = gateway.grpc_server()
    grpc_port = await grpc_server.start()
    log.info("listening on grpc%s://%s:%d", tls, config.server.host, grpc_port)
    # What start-up built lives as long as the process: out of the collector's sight, a full
    # collection no longer walks ~90 k objects (48-107 ms with the loop held) under load.
    gc.collect()
    gc.freeze()
    # A young generation of 700 objects (the default) is collected every few requests, each
    # time walking the live objects of every request in flight: ~5 % of the CPU under load
    # (bench/proxy.py at c=64). At 10 000 the same load spends ~0.7 %; cycles live a little
    # longer.
    gc.set_threshold(GC_YOUNG_THRESHOLD)
    if worker is not None:
        await worker.ready(config.server.http_port, grpc_port)
    signals = ShutdownSignals()
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, gateway.reload_policies)
    await signals.requested.wait()
    await drain_and_stop(gateway, runner, site, grpc_server, signals)


if __name__ == "__main__":
    sys.exit(main())
