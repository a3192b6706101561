"""What every REST dialect shares: the request context, body reading and JSON replies."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from gateway.codecs import jsonio
from gateway.config import ServerConfig
from gateway.errors import BadRequest, PayloadTooLarge
from gateway.types import RequestContext

TIMEOUT_HEADER = "X-Request-Timeout-Ms"
CONFIG_KEY = web.AppKey("server_config", ServerConfig)
FRONTEND_KEY = web.RequestKey("frontend", str)
MODEL_KEY = web.RequestKey("model", str)
CONTEXT_KEY = web.RequestKey("context", RequestContext)


def context_of(request: web.Request, frontend: str, model: str | None = None) -> RequestContext:
    """The call's context; a client may shorten (never lengthen) the configured timeout."""
    config = request.app[CONFIG_KEY]
    timeout_ms: float = config.request_timeout_ms
    asked = request.headers.get(TIMEOUT_HEADER)
    if asked is not None:
        try:
            timeout_ms = min(timeout_ms, float(asked))
        except ValueError:
            raise BadRequest(f"{TIMEOUT_HEADER} must be a number of milliseconds") from None
    request[FRONTEND_KEY] = frontend
    if model is not None:
        request[MODEL_KEY] = model
    context = RequestContext(frontend=frontend, headers=request.headers,
                             deadline=time.monotonic() + timeout_ms / 1000.0)
    request[CONTEXT_KEY] = context
    return context


async def read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body of {request.content_length} bytes exceeds the "
                              f"limit of {limit} bytes")
    body = await request.read()
    if len(body) > limit:
        raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
    return body


async def read_json(request: web.Request) -> Any:
    body = await read_body(request, request.app[CONFIG_KEY].max_body_bytes)
    if not body:
        raise BadRequest("request body is empty; expected JSON")
    return jsonio.loads(body)


def json_reply(document: Any, *, status: int = 200, nonfinite: bool = False) -> web.Response:
    return web.Response(body=jsonio.dumps(document, nonfinite=nonfinite), status=status,
                        content_type="application/json")
