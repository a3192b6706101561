"""TorchServe's inference API (`/predictions/{m}[/{v}]` and `/explanations/...` with any
method, `/ping`, `OPTIONS /` and `/api-description`), so TorchServe clients can point at the
gateway unchanged and reach any backend. A TorchServe backend gets the body, its content type
and the client's headers as they are, and its reply comes back as it is: the handler's status,
headers and content type (none when it set none), streamed parts as HTTP chunks. Any other
backend gets the body as a JSON object of inputs (see `codecs.torchserve_json`) and the reply
is a JSON object of outputs. Failures answer in TorchServe's shape, `{"code", "type",
"message"}` (`error_body`), not the other dialects' `{"error"}`; a TorchServe backend's own
failures with its status and exception class."""

from __future__ import annotations

import contextlib
import logging

from aiohttp import hdrs, web
from multidict import CIMultiDict

from gateway.codecs import jsonio, torchserve_json
from gateway.errors import GatewayError, NotFound
from gateway.pipeline import Pipeline
from gateway.rest import torchserve_openapi as openapi
from gateway.rest.common import (
    CONFIG_KEY,
    FRONTEND_KEY,
    OFF_LOOP_BYTES,
    context_of,
    infer_context,
    read_body,
)
from gateway.rest.v2 import Readiness
from gateway.types import InferRequest, InferResponse, ModelRef, RequestContext

FRONTEND = "torchserve"
JSON = "application/json"
#: What TorchServe's REST API sends with `/ping` (and every handler's reply, which carries it).
NO_CACHE = {"Pragma": "no-cache",
            "Cache-Control": "no-cache; no-store, must-revalidate, private",
            "Expires": "Thu, 01 Jan 1970 00:00:00 UTC"}
log = logging.getLogger(__name__)
#: TorchServe's exception class (its REST errors' `type`) for each failure TorchServe has too,
#: by our error's name; the others keep our name. A TorchServe backend's failures keep the
#: class TorchServe named (`GatewayError.kind`).
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
_PATHS = ("/", "/ping", "/api-description", "/predictions", "/explanations")


def speaks_torchserve(request: web.Request) -> bool:
    """A request to this dialect, routed or not (an unknown path under its prefixes too)."""
    if FRONTEND_KEY in request:
        return request[FRONTEND_KEY] == FRONTEND
    path = request.path
    return path in _PATHS or path.startswith(("/predictions/", "/explanations/"))


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
        """Every method on the inference paths, as TorchServe answers them all alike."""
        inference = [web.route("*", f"/{kind}/{{model}}{version}", self.predict)
                     for kind in ("predictions", "explanations")
                     for version in ("", "/{version}")]
        return [web.route("*", "/ping", self.ping), web.options("/", self.describe),
                web.route("*", "/api-description", self.describe), *inference]

    async def ping(self, request: web.Request) -> web.Response:
        """TorchServe's answer: 200 Healthy, or 500 Unhealthy (the gateway's readiness)."""
        context_of(request, FRONTEND)
        ready, why = await self._readiness()
        if not ready:
            log.info("GET /ping -> Unhealthy: %s", why)
        return web.Response(body=jsonio.dumps({"status": "Healthy" if ready else "Unhealthy"}),
                            status=200 if ready else 500, content_type=JSON, headers=NO_CACHE)

    async def describe(self, request: web.Request) -> web.Response:
        """`OPTIONS /` and `/api-description`: what this door serves, in OpenAPI 3.0.1."""
        context_of(request, FRONTEND)
        return web.Response(body=openapi.DOCUMENT, content_type=JSON)

    async def predict(self, request: web.Request) -> web.StreamResponse:
        ref = ModelRef(request.match_info["model"], request.match_info.get("version"))
        context = infer_context(request, FRONTEND, ref.model)
        body = await read_body(request, self._pipeline, context)
        try:
            response = await self._pipeline.infer(InferRequest(
                ref=ref, context=context, body=body,
                decoder=torchserve_json.body_decoder(body,
                                                     budget=request.app[CONFIG_KEY].decode),
                content_type=request.headers.get("Content-Type", ""),
                headers=request.headers, explain=request.path.startswith("/explanations/"),
                decode_off_loop=len(body) > OFF_LOOP_BYTES))
        except NotFound as exc:
            if exc.kind:  # TorchServe's own
                raise
            raise await self._not_found(ref, context) from None
        if response.body is None:
            return web.Response(body=torchserve_json.encode(response.outputs),
                                content_type=JSON)
        headers = CIMultiDict(response.headers)
        if response.content_type is not None:
            headers["Content-Type"] = response.content_type
        headers.update(context.reply_headers)
        return await _relay(request, response, headers)

    async def _not_found(self, ref: ModelRef, context: RequestContext) -> NotFound:
        """The gateway's own 404 in TorchServe's words: which of model and version is not
        there (a TorchServe backend's 404 already says so)."""
        if ref.version is not None and ref.model in await self._pipeline.model_names(context):
            return NotFound(f"Model version: {ref.version} does not exist for model: "
                            f"{ref.model}", kind="ModelVersionNotFoundException")
        return NotFound(f"Model not found: {ref.model}", kind="ModelNotFoundException")


class _AsSent(web.StreamResponse):
    """A reply without a `Content-Type` when TorchServe sent none (aiohttp would add
    `application/octet-stream` to any non-empty body)."""

    async def _prepare_headers(self) -> None:
        typed = hdrs.CONTENT_TYPE in self.headers
        await super()._prepare_headers()
        if not typed:
            self.headers.popall(hdrs.CONTENT_TYPE, None)


async def _relay(request: web.Request, response: InferResponse,
                 headers: CIMultiDict[str]) -> web.StreamResponse:
    """The backend's reply with its status and headers; a streaming handler's parts as HTTP
    chunks, each sent as it arrives. A failure after the first part can no longer change the
    status: the connection is cut, so the client sees an incomplete body rather than a
    complete wrong one."""
    first, rest = response.body or b"", response.chunks
    stream = _AsSent(status=response.status, headers=headers)
    if rest is None:
        stream.content_length = len(first)
        await stream.prepare(request)
        await stream.write(first)
        await stream.write_eof()
        return stream
    stream.enable_chunked_encoding()
    await stream.prepare(request)
    async with contextlib.aclosing(rest) as chunks:
        try:
            await stream.write(first)
            async for chunk in chunks:
                await stream.write(chunk)
        except GatewayError as exc:
            log.warning("POST %s: stream cut after it started: %s", request.path, exc.message)
            if request.transport is not None:
                request.transport.close()
            return stream
        except ConnectionResetError:  # the client left: the backend's stream is closed too
            log.debug("POST %s: the client left the stream", request.path)
            return stream
    await stream.write_eof()
    return stream
