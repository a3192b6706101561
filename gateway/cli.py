"""`gateway serve` and `gateway check-config`."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.config import ConfigError, GatewayConfig, load_config

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
    args = parser.parse_args(argv)

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"gateway: invalid config: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(f"{args.config}: ok ({len(config.adapters)} adapters, {len(config.models)} "
              "configured models)")
        return 0
    overrides = {k: v for k, v in (("http_port", args.http_port), ("grpc_port", args.grpc_port))
                 if v is not None}
    config = dataclasses.replace(config, server=dataclasses.replace(config.server, **overrides))
    logging.basicConfig(level=config.server.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _run(serve_forever(config))
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

    gateway = Gateway(config)
    runner = web.AppRunner(gateway.http_app(),
                           access_log=log.getChild("access") if config.server.access_log
                           else None)
    await runner.setup()
    site = web.TCPSite(runner, config.server.host, config.server.http_port, reuse_port=True)
    await site.start()
    for host, port in bound_addresses(runner):
        log.info("listening on http://%s:%d", host, port)
    grpc_server = gateway.grpc_server()
    grpc_port = await grpc_server.start()
    log.info("listening on grpc://%s:%d", config.server.host, grpc_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: finishing in-flight requests")
    await grpc_server.stop()
    await runner.cleanup()


def bound_addresses(runner: web.AppRunner) -> list[tuple[str, int]]:
    """Where the sites actually listen (port 0 in config picks a free port)."""
    addresses = []
    for site in runner.sites:
        server = site._server  # aiohttp keeps the asyncio server private
        for sock in getattr(server, "sockets", ()):
            host, port = sock.getsockname()[:2]
            addresses.append((host, port))
    return addresses


if __name__ == "__main__":
    sys.exit(main())
