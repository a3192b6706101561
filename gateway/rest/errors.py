"""Turns every failure into a JSON `{"error": ...}` reply with the right status, logs it once
and records the request (metrics, access line); no traceback ever reaches a client."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.codecs import jsonio
from gateway.errors import GatewayError, PayloadTooLarge
from gateway.rest.common import CONTEXT_KEY, FRONTEND_KEY, MODEL_KEY
from gateway.telemetry.requests import RequestRecorder

log = logging.getLogger("gateway.errors")
RECORDER_KEY = web.AppKey("recorder", RequestRecorder)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_reply(status: int, message: str,
                headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=jsonio.dumps({"error": message}), status=status, headers=headers,
                        content_type="application/json")


@web.middleware
async def errors_and_metrics(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    error = ""
    try:
        response = await handler(request)
    except GatewayError as exc:
        error = type(exc).__name__
        log.log(logging.WARNING if exc.http_status >= 500 else logging.INFO,
                "%s %s -> %d %s: %s", request.method, request.path, exc.http_status, error,
                exc.message)
        response = error_reply(exc.http_status, exc.message, exc.reply_headers())
    except web.HTTPRequestEntityTooLarge as exc:
        error = PayloadTooLarge.__name__
        response = error_reply(413, f"request body too large: {exc.text}")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error = type(exc).__name__
        message = {404: f"no such endpoint: {request.path}",
                   405: f"method {request.method} not allowed on {request.path}"}.get(
            exc.status, exc.reason)
        response = error_reply(exc.status, message)
    except Exception:
        error = "InternalError"
        log.exception("%s %s -> 500: unhandled error", request.method, request.path)
        response = error_reply(500, "internal error (logged by the gateway)")
    context = request.get(CONTEXT_KEY)
    if context is not None and context.reply_headers:
        response.headers.update(context.reply_headers)
    request.app[RECORDER_KEY].finished(
        request.get(FRONTEND_KEY, "http"), request.get(MODEL_KEY, ""), str(response.status),
        error, time.perf_counter() - started, context,
        request=f"{request.method} {request.path}")
    return response
