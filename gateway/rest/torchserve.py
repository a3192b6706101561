"""TorchServe's inference API, `POST /predictions/{m}[/{v}]` and `GET /ping`, so TorchServe
clients can point at the gateway unchanged and reach any backend. A TorchServe backend gets the
body as it is and its reply comes back as it is, streamed parts as HTTP chunks; any other
backend gets the body as a JSON object of inputs (see `codecs.torchserve_json`) and the reply
is a JSON object of outputs. Failures answer in TorchServe's shape, `{"code", "type",
"message"}` (`error_body`), not the other dialects' `{"error"}`."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator

from aiohttp import web

from gateway.codecs import jsonio, torchserve_json
from gateway.errors import GatewayError
from gateway.pipeline import Pipeline
from gateway.rest.common import (
    CONFIG_KEY,
    FRONTEND_KEY,
    OFF_LOOP_BYTES,
    context_of,
    infer_context,
    read_body,
)
from gateway.rest.v2 import Readiness
from gateway.types import InferRequest, ModelRef

FRONTEND = "torchserve"
JSON = "application/json"
log = logging.getLogger(__name__)
#: TorchServe's exception class (its REST errors' `type`) for each failure TorchServe has too,
#: by our error's name; the others keep our name. An unknown version is ModelNotFoundException
#: there too (TorchServe 0.12: "Model not found: m").
TORCHSERVE_TYPES = {
    "NotFound": "ModelNotFoundException",
    "HTTPNotFound": "ResourceNotFoundException",  # no such path
    "MethodNotAllowed": "MethodNotAllowedException",
    "HTTPMethodNotAllowed": "MethodNotAllowedException",
    "BadRequest": "BadRequestException",
    "MalformedBody": "BadRequestException",
    "UnsupportedEncoding": "BadRequestException",
    "Unavailable": "ServiceUnavailableException",
    "QueueFull": "ServiceUnavailableException",
    "Overloaded": "ServiceUnavailableException",
    "ShuttingDown": "ServiceUnavailableException",
    "DeadlineExceeded": "RequestTimeoutException",
    "BackendError": "InternalServerException",
    "InternalError": "InternalServerException",
}
_PATHS = ("/ping", "/predictions")


def speaks_torchserve(request: web.Request) -> bool:
    """A request to this dialect, routed or not (an unknown path under /predictions too)."""
    if FRONTEND_KEY in request:
        return request[FRONTEND_KEY] == FRONTEND
    path = request.path
    return path in _PATHS or path.startswith("/predictions/")


def error_body(status: int, error: str, message: str) -> bytes:
    """A failure as TorchServe's REST API answers one:
    `{"code": 404, "type": "ModelNotFoundException", "message": "Model not found: m"}`."""
    return jsonio.dumps({"code": status, "type": TORCHSERVE_TYPES.get(error, error),
                         "message": message})


class TorchServeRoutes:
    def __init__(self, pipeline: Pipeline, readiness: Readiness) -> None:
        self._pipeline = pipeline
        self._readiness = readiness

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/ping", self.ping),
                web.post("/predictions/{model}", self.predict),
                web.post("/predictions/{model}/{version}", self.predict)]

    async def ping(self, request: web.Request) -> web.Response:
        """TorchServe's answer: 200 Healthy, or 500 Unhealthy (the gateway's readiness)."""
        context_of(request, FRONTEND)
        ready, why = await self._readiness()
        if not ready:
            log.info("GET /ping -> Unhealthy: %s", why)
        return web.json_response({"status": "Healthy" if ready else "Unhealthy"},
                                 status=200 if ready else 500)

    async def predict(self, request: web.Request) -> web.StreamResponse:
        ref = ModelRef(request.match_info["model"], request.match_info.get("version"))
        context = infer_context(request, FRONTEND, ref.model)
        body = await read_body(request, self._pipeline, context)
        response = await self._pipeline.infer(InferRequest(
            ref=ref, context=context, body=body,
            decoder=torchserve_json.body_decoder(body, budget=request.app[CONFIG_KEY].decode),
            content_type=request.headers.get("Content-Type", ""),
            decode_off_loop=len(body) > OFF_LOOP_BYTES))
        if response.body is None:
            return web.Response(body=torchserve_json.encode(response.outputs),
                                content_type=JSON)
        content_type = response.content_type or _sniff(response.body)
        if response.chunks is None:
            return web.Response(body=response.body, headers={"Content-Type": content_type})
        return await _relay(request, response.body, response.chunks,
                            {"Content-Type": content_type, **context.reply_headers})


async def _relay(request: web.Request, first: bytes, rest: AsyncGenerator[bytes, None],
                 headers: dict[str, str]) -> web.StreamResponse:
    """A streaming handler's parts as HTTP chunks, each sent as it arrives. A failure after the
    first part can no longer change the status: the connection is cut, so the client sees an
    incomplete body rather than a complete wrong one."""
    stream = web.StreamResponse(headers=headers)
    stream.enable_chunked_encoding()
    await stream.prepare(request)
    async with contextlib.aclosing(rest) as chunks:
        await stream.write(first)
        try:
            async for chunk in chunks:
                await stream.write(chunk)
        except GatewayError as exc:
            log.warning("POST %s: stream cut after it started: %s", request.path, exc.message)
            if request.transport is not None:
                request.transport.close()
            return stream
    await stream.write_eof()
    return stream


def _sniff(body: bytes) -> str:
    """gRPC carries no content type: what TorchServe's JSON-writing handlers return, or bytes."""
    return JSON if body[:1] in (b"{", b"[") else "application/octet-stream"
