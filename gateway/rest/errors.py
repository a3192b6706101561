"""Turns every failure into a JSON `{"error": ...}` reply with the right status, logs it once
and records the request (metrics, access line); no traceback ever reaches a client. A reply
sent before a large or unbounded body was read closes the connection rather than drain what the
client sends; a small one is drained, so a shed keep-alive client need not reconnect."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from gateway.codecs import jsonio
from gateway.errors import GatewayError, Overloaded, PayloadTooLarge, log_level
from gateway.rest.common import CONTEXT_KEY, FRONTEND_KEY, MODEL_KEY, release_slot
from gateway.telemetry.requests import RequestRecorder

log = logging.getLogger("gateway.errors")
RECORDER_KEY = web.AppKey("recorder", RequestRecorder)
DRAIN_LIMIT_BYTES = 64 * 1024  # an unread body up to this size is read and dropped
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
        log.log(log_level(exc),
                "%s %s -> %d %s: %s", request.method, request.path, exc.http_status, error,
                exc.message)
        response = error_reply(exc.http_status, exc.message, exc.reply_headers())
        if isinstance(exc, Overloaded):
            hold_off(request, exc.retry_after_s or 1.0)
    except RequestPayloadError:
        error = "MalformedBody"
        response = error_reply(400, "malformed request body: its transfer or content encoding "
                               "could not be decoded")
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
    finally:
        release_slot(request)
    if error and request.body_exists and not request.content.is_eof() and (
            request.content_length is None or request.content_length > DRAIN_LIMIT_BYTES):
        response.force_close()
    context = request.get(CONTEXT_KEY)
    if context is not None and context.reply_headers:
        response.headers.update(context.reply_headers)
    request.app[RECORDER_KEY].finished(
        request.get(FRONTEND_KEY, "http"), request.get(MODEL_KEY, ""), str(response.status),
        error, time.perf_counter() - started, context,
        request=f"{request.method} {request.path}")
    return response



def hold_off(request: web.Request, seconds: float) -> None:
    """Honour our own `Retry-After` on a shed client's connection: its next request is not
    read until then. A client that retries at once (most load generators, many SDKs) would
    otherwise make the gateway spend its time refusing instead of serving. The pause is
    jittered (0.5-1.5x) so that connections shed together do not all come back together."""
    transport = request.transport
    if transport is None or transport.is_closing():
        return
    transport.pause_reading()

    def resume() -> None:
        if not transport.is_closing():
            transport.resume_reading()

    asyncio.get_running_loop().call_later(seconds * (0.5 + random.random()), resume)
