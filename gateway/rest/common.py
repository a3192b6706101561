"""What every REST dialect shares: the request context, admission, body reading and JSON
replies. Order per request: shed (no slot: 503), authenticate from the headers, then read the
body against the route's limit as it arrives; anonymous bytes are never buffered."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web

from gateway.admission import InflightLimits
from gateway.codecs import jsonio
from gateway.config import ServerConfig
from gateway.errors import BadRequest
from gateway.pipeline import Pipeline
from gateway.rest.body import read_limited
from gateway.telemetry import request_ids
from gateway.tls.subject import http_peer_subject
from gateway.types import RequestContext

#: JSON bodies past this size are parsed and decoded in a worker thread: at ~100 ns a number,
#: 256 KiB is ~10 ms of work, the most one request may hold the event loop for.
OFF_LOOP_BYTES = 256 * 1024
T = TypeVar("T")
TIMEOUT_HEADER = "X-Request-Timeout-Ms"
CONFIG_KEY = web.AppKey("server_config", ServerConfig)
FRONTEND_KEY = web.RequestKey("frontend", str)
MODEL_KEY = web.RequestKey("model", str)
CONTEXT_KEY = web.RequestKey("context", RequestContext)
INFLIGHT_KEY = web.AppKey("inflight", InflightLimits)
SLOT_KEY = web.RequestKey("inflight_slot", str)  # the model whose slot the request holds
REQUEST_ID_KEY = web.RequestKey("request_id", str)
#: Load balancers' and orchestrators' probes and Prometheus' scrapes: every few seconds, they
#: would bury the requests in access lines and traces (`[server] log_probes` keeps them).
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/v2/health/live",
                         "/v2/health/ready", "/ping"})


def request_id_of(request: web.Request) -> str:
    """The request's id: its `X-Request-Id` if that is a safe one, else one made for it."""
    request_id = request.get(REQUEST_ID_KEY)
    if request_id is None:
        request_id = request_ids.accept(request.headers.get(request_ids.HEADER))
        request[REQUEST_ID_KEY] = request_id
    return request_id


def context_of(request: web.Request, frontend: str, model: str | None = None) -> RequestContext:
    """The call's context; a client may shorten (never lengthen) the configured timeout."""
    config = request.app[CONFIG_KEY]
    timeout_ms: float = config.request_timeout_ms
    asked = request.headers.get(TIMEOUT_HEADER)
    if asked is not None:
        try:
            shorter = float(asked)
        except ValueError:
            shorter = -1.0
        if not shorter > 0:  # NaN included
            raise BadRequest(f"{TIMEOUT_HEADER} must be a positive number of milliseconds")
        timeout_ms = min(timeout_ms, shorter)
    request[FRONTEND_KEY] = frontend
    if model is not None:
        request[MODEL_KEY] = model
    context = RequestContext(frontend=frontend, headers=request.headers,
                             deadline=time.monotonic() + timeout_ms / 1000.0,
                             request_id=request_id_of(request),
                             tls_subject=http_peer_subject(request.transport),
                             client_address=config.trusted_proxies.client(
                                 request.remote or "", request.headers))
    request[CONTEXT_KEY] = context
    return context


def infer_context(request: web.Request, frontend: str, model: str) -> RequestContext:
    """`context_of` for a request that will run a model: it takes an in-flight slot first
    (released when the reply is ready, by `gateway.rest.errors`), or is shed with 503."""
    request[FRONTEND_KEY], request[MODEL_KEY] = frontend, model  # a shed is recorded as theirs
    request.app[INFLIGHT_KEY].acquire(model)
    request[SLOT_KEY] = model
    return context_of(request, frontend, model)


def release_slot(request: web.Request) -> None:
    model = request.get(SLOT_KEY)
    if model is not None:
        del request[SLOT_KEY]
        request.app[INFLIGHT_KEY].release(model)


async def read_body(request: web.Request, pipeline: Pipeline, context: RequestContext, *,
                    limit: int | None = None, what: str = "max_body_bytes") -> bytes:
    """The body, once the caller is authenticated, counted as it arrives (after chunked and
    gzip/deflate decoding): nothing past `limit` is ever held."""
    await pipeline.authenticate(context)
    if limit is None:
        limit = request.app[CONFIG_KEY].max_body_bytes
    return await read_limited(request, limit, what)




@dataclass(frozen=True, slots=True)
class JsonBody:
    document: Any
    size: int

    @property
    def large(self) -> bool:
        return self.size > OFF_LOOP_BYTES

    async def parse(self, parse: Callable[[Any], T]) -> T:
        """`parse(document)`, in a worker thread if the body is large."""
        if self.large:
            return await asyncio.to_thread(parse, self.document)
        return parse(self.document)


async def read_json(request: web.Request, pipeline: Pipeline,
                    context: RequestContext) -> JsonBody:
    body = await read_body(request, pipeline, context)
    if len(body) > OFF_LOOP_BYTES:
        return JsonBody(await asyncio.to_thread(_loads, body), len(body))
    return JsonBody(_loads(body), len(body))


def _loads(body: bytes) -> Any:
    if not body:
        raise BadRequest("request body is empty; expected JSON")
    return jsonio.loads(body)


def json_reply(document: Any, *, status: int = 200, nonfinite: bool = False) -> web.Response:
    return web.Response(body=jsonio.dumps(document, nonfinite=nonfinite), status=status,
                        content_type="application/json")
