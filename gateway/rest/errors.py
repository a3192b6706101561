"""Turns every failure into a JSON `{"error": ...}` reply with the right status, logs it once
and counts it; no traceback ever reaches a client."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.codecs import jsonio
from gateway.errors import GatewayError, PayloadTooLarge
from gateway.metrics import GatewayMetrics
from gateway.rest.common import CONTEXT_KEY, FRONTEND_KEY, MODEL_KEY

log = logging.getLogger("gateway.errors")
METRICS_KEY = web.AppKey("metrics", GatewayMetrics)
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
    metrics = request.app[METRICS_KEY]
    frontend = request.get(FRONTEND_KEY, "http")
    model = request.get(MODEL_KEY, "")
    metrics.requests.labels(frontend, model, str(response.status)).inc()
    metrics.latency.labels(frontend, model).observe(time.perf_counter() - started)
    if error:
        metrics.errors.labels(frontend, str(response.status), error).inc()
    return response
