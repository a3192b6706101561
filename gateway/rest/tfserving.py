"""TF Serving's REST API: `/v1/models/{m}[/versions/{v}|/labels/{l}]` with `:predict`,
`/metadata` and status, so TF Serving clients can point at the gateway unchanged."""

from __future__ import annotations

import re
from dataclasses import replace

from aiohttp import web

from gateway.codecs import jsonio, tfserving_json
from gateway.errors import BadRequest, MethodNotAllowed, NotFound
from gateway.pipeline import Pipeline
from gateway.rest.common import CONFIG_KEY, context_of, infer_context, json_reply, read_json
from gateway.types import InferRequest, ModelRef

FRONTEND = "tfserving"
_PATH = re.compile(
    r"^(?P<model>[^/:]+)"
    r"(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?:(?P<metadata>/metadata)|:(?P<verb>[A-Za-z]+))?$")


#: aiohttp's name for the one route that takes every TF Serving path (`route_template` names
#: each path's own route)
CATCH_ALL = "/v1/models/{tail}"
_VERBS = ("predict", "classify", "regress")


class TfServingRoutes:
    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/v1/models/{tail:.+}", self.get),
                web.post("/v1/models/{tail:.+}", self.post)]

    async def get(self, request: web.Request) -> web.Response:
        ref, metadata, verb = _parse(request)
        if verb:
            raise MethodNotAllowed(f":{verb} takes POST, not GET")
        context = context_of(request, FRONTEND, ref.model)
        if metadata:
            document = tfserving_json.encode_metadata(
                await self._pipeline.metadata(ref, context))
        else:
            document = tfserving_json.encode_status(await self._pipeline.status(ref, context))
        return json_reply(document)

    async def post(self, request: web.Request) -> web.Response:
        ref, metadata, verb = _parse(request)
        if metadata or not verb:
            raise MethodNotAllowed(f"{request.path} takes GET; POST needs :predict")
        if verb in ("classify", "regress"):
            raise BadRequest(f"model {ref.model!r} exposes no {verb} signature: it serves "
                             "predict only")
        if verb != "predict":
            raise NotFound(f"unknown verb :{verb} (predict, classify, regress)")
        context = infer_context(request, FRONTEND, ref.model)
        json = await read_json(request, self._pipeline, context)
        body = tfserving_json.parse_predict(json.document, budget=request.app[CONFIG_KEY].decode)
        response = await self._pipeline.infer(InferRequest(
            ref=replace(ref, signature=body.signature_name), context=context,
            decoder=body.decode, decode_off_loop=json.large))
        document = tfserving_json.encode_predict(response.outputs, row_format=body.row_format)
        return json_reply(document, nonfinite=jsonio.has_nonfinite(response.outputs))


def route_template(tail: str) -> str | None:
    """The TF Serving route a path below /v1/models/ takes, with placeholders for what varies:
    `/v1/models/{model}/versions/{version}:predict`; None for a path of no route."""
    match = _PATH.match(tail)
    if match is None or (match["verb"] is not None and match["verb"] not in _VERBS):
        return None
    template = "/v1/models/{model}"
    if match["version"] is not None:
        template += "/versions/{version}"
    elif match["label"] is not None:
        template += "/labels/{label}"
    if match["metadata"]:
        return template + "/metadata"
    return template + (f":{match['verb']}" if match["verb"] else "")


def _parse(request: web.Request) -> tuple[ModelRef, bool, str | None]:
    match = _PATH.match(request.match_info["tail"])
    if match is None:
        raise NotFound(f"no such endpoint: {request.path}")
    ref = ModelRef(match["model"], match["version"], match["label"])
    if ref.version is not None and not ref.version.isdigit():
        raise NotFound(f"version must be a number, got {ref.version!r}")
    return ref, bool(match["metadata"]), match["verb"]
