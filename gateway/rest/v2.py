"""The Open Inference Protocol v2 REST API (KServe, Triton, MLServer clients)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

import gateway
from gateway.codecs import jsonio, v2_json
from gateway.errors import Unavailable
from gateway.pipeline import Pipeline
from gateway.rest.common import CONFIG_KEY, context_of, infer_context, json_reply, read_json
from gateway.types import InferRequest, ModelRef

FRONTEND = "v2"
Readiness = Callable[[], Awaitable[tuple[bool, str]]]


class V2Routes:
    def __init__(self, pipeline: Pipeline, readiness: Readiness) -> None:
        self._pipeline = pipeline
        self._readiness = readiness

    def routes(self) -> list[web.RouteDef]:
        routes = [web.get("/v2", self.server_metadata),
                  web.get("/v2/health/live", self.live),
                  web.get("/v2/health/ready", self.ready)]
        for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            routes += [web.get(base, self.model_metadata),
                       web.get(base + "/ready", self.model_ready),
                       web.post(base + "/infer", self.infer)]
        return routes

    async def server_metadata(self, request: web.Request) -> web.Response:
        context_of(request, FRONTEND)
        return json_reply({"name": "inference-gateway", "version": gateway.__version__,
                           "extensions": ["model_repository"]})

    async def live(self, request: web.Request) -> web.Response:
        context_of(request, FRONTEND)
        return json_reply({"live": True})

    async def ready(self, request: web.Request) -> web.Response:
        context_of(request, FRONTEND)
        ready, why = await self._readiness()
        if not ready:
            raise Unavailable(f"not ready: {why}", retry_after_s=1)
        return json_reply({"ready": True})

    async def model_metadata(self, request: web.Request) -> web.Response:
        ref = _ref(request)
        metadata = await self._pipeline.metadata(ref, context_of(request, FRONTEND, ref.model))
        return json_reply(v2_json.encode_metadata(metadata))

    async def model_ready(self, request: web.Request) -> web.Response:
        ref = _ref(request)
        statuses = await self._pipeline.status(ref, context_of(request, FRONTEND, ref.model))
        if not any(s.state == "AVAILABLE" for s in statuses):
            raise Unavailable(f"model {ref.model!r} is not ready", retry_after_s=1)
        return json_reply({"name": ref.model, "ready": True})

    async def infer(self, request: web.Request) -> web.Response:
        ref = _ref(request)
        context = infer_context(request, FRONTEND, ref.model)
        budget = request.app[CONFIG_KEY].decode
        json = await read_json(request, self._pipeline, context)
        body = await json.parse(lambda document: v2_json.parse_infer(document, budget=budget))
        response = await self._pipeline.infer(InferRequest(
            ref=ref, context=context, inputs=body.inputs, outputs=body.outputs,
            parameters=body.parameters, id=body.id))
        return json_reply(v2_json.encode_infer(response),
                          nonfinite=jsonio.has_nonfinite(response.outputs))


def _ref(request: web.Request) -> ModelRef:
    return ModelRef(request.match_info["model"], request.match_info.get("version"))
