"""`gateway serve`, `gateway check-config` and `gateway token`."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import signal
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from gateway.auth.keys import HMAC_ALGORITHMS, secret_from_env
from gateway.auth.mint import mint_token
from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.policy.loader import compile_policy, read_directory
from gateway.policy.model import Policy
from gateway.telemetry.logs import configure_logging

log = logging.getLogger("gateway")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", type=Path, default=Path("gateway.toml"))
    serve.add_argument("--http-port", type=int, help="overrides [server] http_port")
    serve.add_argument("--grpc-port", type=int, help="overrides [server] grpc_port")
    check = commands.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("config", type=Path)
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
    if args.command == "check-config":
        print(f"{args.config}: ok ({len(config.adapters)} adapters, {len(config.models)} "
              f"configured models, {len(policy.routes)} policy routes)")
        return 0
    overrides = {k: v for k, v in (("http_port", args.http_port), ("grpc_port", args.grpc_port))
                 if v is not None}
    config = dataclasses.replace(config, server=dataclasses.replace(config.server, **overrides))
    configure_logging(config.server.log_level)
    _run(serve_forever(config))
    return 0


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


async def serve_forever(config: GatewayConfig) -> None:
    from gateway.app import Gateway  # heavy imports (ONNX Runtime) only when serving
    from gateway.rest.connections import start_http

    gateway = Gateway(config)
    refused = gateway.metrics.connections_refused
    runner, site = await start_http(gateway.http_app(), config.server,
                                    lambda reason: refused.labels(reason).inc())
    server = runner.server
    gateway.metrics.watch_connections(lambda: len(server.connections) if server else 0)
    for host, port in site.addresses():
        log.info("listening on http://%s:%d", host, port)
    grpc_server = gateway.grpc_server()
    grpc_port = await grpc_server.start()
    log.info("listening on grpc://%s:%d", config.server.host, grpc_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, gateway.reload_policies)
    await stop.wait()
    log.info("shutting down: finishing in-flight requests")
    await grpc_server.stop()
    await runner.cleanup()


if __name__ == "__main__":
    sys.exit(main())
