"""Every route's handler runs inside `answered`: it turns every failure into a JSON
`{"error": ...}` reply (TorchServe's dialect: its own shape) with the right status, logs it
once, records the request (metrics, access line) and counts it in flight for a drain; no
traceback ever reaches a client. A reply sent before a large or unbounded body was read closes
the connection rather than drain what the client sends; a small one is drained, so a shed
keep-alive client need not reconnect."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from gateway.codecs import jsonio
from gateway.drain import CUT_SHORT, Drain
from gateway.errors import GatewayError, Overloaded, PayloadTooLarge, ShuttingDown, log_level
from gateway.rest import torchserve
from gateway.rest.common import (
    CONFIG_KEY,
    CONTEXT_KEY,
    FRONTEND_KEY,
    MODEL_KEY,
    PROBE_PATHS,
    release_slot,
    request_id_of,
)
from gateway.rest.draining import cut_short
from gateway.telemetry import request_ids
from gateway.telemetry.requests import RequestRecorder

log = logging.getLogger("gateway.errors")
RECORDER_KEY = web.AppKey("recorder", RequestRecorder)
#: A request whose client closed its connection before the answer, as nginx counts one (its
#: "Client Closed Request"); no reply carries it.
CLIENT_CLOSED = 499
DRAIN_LIMIT_BYTES = 64 * 1024  # a refused request's connection stays open if its body is this small
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Its own generator: the process-wide one may be seeded or drawn on by others (Hypothesis).
_jitter = random.Random()


def error_reply(request: web.Request, status: int, error: str, message: str,
                headers: dict[str, str] | None = None) -> web.Response:
    """`{"error": message}`, or TorchServe's shape for a request to its dialect."""
    body = (torchserve.error_body(status, error, message) if torchserve.speaks_torchserve(request)
            else jsonio.dumps({"error": message}))
    return web.Response(body=body, status=status, headers=headers,
                        content_type="application/json")


def answered(handler: Handler, drain: Drain) -> Handler:
    """`handler` as its route runs it. A wrapper per route rather than an aiohttp middleware:
    with any middleware, aiohttp runs every request through a chain of partials and a context
    manager (~4 µs a middleware, measured)."""

    async def route(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        request_id = request_id_of(request)
        bound = request_ids.bind(request_id)  # for backend calls and log lines
        # Probes and scrapes come every few seconds: no access line, and a refusal (not ready
        # yet) at debug level, unless `[server] log_probes`
        logged = request.path not in PROBE_PATHS or request.app[CONFIG_KEY].log_probes
        error = ""
        try:
            call = drain.enter()  # refused once the drain expired
            try:
                response = await handler(request)
            except asyncio.CancelledError:
                if cut_short(request, drain):
                    raise ShuttingDown(CUT_SHORT, retry_after_s=1) from None
                if not drain.was_cut():  # aiohttp cancels the handler of a closed connection
                    _record(request, None, CLIENT_CLOSED, "ClientCancelled", started,
                            request_id, logged)
                raise
            finally:
                drain.leave(call)
        except GatewayError as exc:
            error, response = _refusal(request, exc, logged)
        except RequestPayloadError:
            error = "MalformedBody"
            response = error_reply(request, 400, error, "malformed request body: its transfer "
                                   "or content encoding could not be decoded")
        except web.HTTPRequestEntityTooLarge as exc:
            error = PayloadTooLarge.__name__
            response = error_reply(request, 413, error, f"request body too large: {exc.text}")
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            error = type(exc).__name__
            message = {404: f"no such endpoint: {request.path}",
                       405: f"method {request.method} not allowed on {request.path}"}.get(
                exc.status, exc.reason)
            response = error_reply(request, exc.status, error, message)
        except Exception:
            error = "InternalError"
            log.exception("%s %s -> 500: unhandled error", request.method, request.path)
            response = error_reply(request, 500, error, "internal error (logged by the gateway)")
        finally:
            release_slot(request)
            request_ids.unbind(bound)
        if error and request.body_exists and not request.content.at_eof() and (
                request.content_length is None or request.content_length > DRAIN_LIMIT_BYTES):
            response.force_close()  # after the listener's lingering read of what is in flight
        context = request.get(CONTEXT_KEY)
        if context is not None and context.reply_headers:
            response.headers.update(context.reply_headers)
        _record(request, response, response.status, error, started, request_id, logged)
        return response

    return route


def _record(request: web.Request, response: web.StreamResponse | None, status: int,
            error: str, started: float, request_id: str, logged: bool) -> None:
    """Metrics and the access line for a request answered with `response`, or with none
    (`status` `CLIENT_CLOSED`: the client left first)."""
    recorder = request.app[RECORDER_KEY]
    recorder.finished(
        request.get(FRONTEND_KEY, "http"), request.get(MODEL_KEY, ""), str(status), error,
        time.perf_counter() - started, request.get(CONTEXT_KEY), request_id=request_id,
        request=f"{request.method} {request.path}", log=logged,
        **(_connection_fields(request, response) if logged and recorder.logs else {}))


def _refusal(request: web.Request, exc: GatewayError,
             logged: bool) -> tuple[str, web.Response]:
    """The error's kind and reply, logged (at debug level for a probe's unless `logged`)."""
    error = type(exc).__name__
    log.log(log_level(exc) if logged else logging.DEBUG, "%s %s -> %d %s: %s", request.method,
            request.path, exc.http_status, error, exc.message)
    response = error_reply(request, exc.http_status, exc.kind or error, exc.message,
                           exc.reply_headers())
    if isinstance(exc, Overloaded):
        hold_off(request, exc.retry_after_s or 1.0)
    return error, response


def _connection_fields(request: web.Request,
                       response: web.StreamResponse | None) -> dict[str, Any]:
    """Who sent the request and the body bytes each way, as they crossed the wire (compressed
    if they were); a streamed reply counts what was written, its head and chunk framing
    included."""
    return {"client": request.remote or "", "user_agent": request.headers.get("User-Agent", ""),
            "bytes_in": request.content.total_bytes,
            "bytes_out": 0 if response is None else response.body_length if response.prepared
            else response.content_length or 0}



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

    asyncio.get_running_loop().call_later(seconds * (0.5 + _jitter.random()), resume)
