"""Managing in-process models over REST: list, upload (POST), new version (PUT), delete, and
a simple predict. Uploads take a raw ONNX body or a multipart form with a `file` field; the
caller's `manage` scope is checked before a byte of the upload is read."""

from __future__ import annotations

from typing import Any

from aiohttp import BodyPartReader, MultipartReader, web

from gateway.codecs import jsonio, tfserving_json, v2_json
from gateway.errors import BadRequest, NotFound, PayloadTooLarge
from gateway.pipeline import Pipeline
from gateway.rest.common import (
    CONFIG_KEY,
    MODEL_KEY,
    context_of,
    infer_context,
    json_reply,
    read_body,
    read_json,
)
from gateway.types import InferRequest, ModelRef, RequestContext, VersionStatus

FRONTEND = "models"
MAX_NAME_BYTES = 256  # a model name in a form field


class ManagementRoutes:
    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/models/{model}/predict", self.predict),  # tried first (see V2Routes)
                web.get("/models", self.list_models),
                web.post("/models", self.create),
                web.get("/models/{model}", self.describe),
                web.put("/models/{model}", self.add_version),
                web.delete("/models/{model}", self.delete)]

    async def list_models(self, request: web.Request) -> web.Response:
        context = context_of(request, FRONTEND)
        models = []
        for name in await self._pipeline.model_names(context):
            try:
                statuses = await self._pipeline.status(ModelRef(name), context)
            except NotFound:  # deleted between listing and asking
                continue
            models.append({"name": name, "versions": _versions(statuses)})
        return json_reply({"models": models})

    async def describe(self, request: web.Request) -> web.Response:
        ref = ModelRef(request.match_info["model"])
        context = context_of(request, FRONTEND, ref.model)
        statuses = await self._pipeline.status(ref, context)
        document: dict[str, Any] = {"name": ref.model, "versions": _versions(statuses)}
        if any(s.state == "AVAILABLE" for s in statuses):
            document["metadata"] = v2_json.encode_metadata(
                await self._pipeline.metadata(ref, context))
        return json_reply(document)

    async def create(self, request: web.Request) -> web.Response:
        context = context_of(request, FRONTEND)
        named = request.query.get("name", "")
        # A name in the form is known only once read: until then, the bare scope is needed.
        await self._pipeline.model_store(context, named or None)
        name, data = await self._upload(request, context)
        if not name:
            raise BadRequest("name the model: ?name=NAME or a 'name' form field")
        request[MODEL_KEY] = name
        store = await self._pipeline.model_store(context, name)
        status = await store.create_model(name, data)
        return json_reply(_uploaded(name, status), status=201)

    async def add_version(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        context = context_of(request, FRONTEND, name)
        store = await self._pipeline.model_store(context, name)
        _, data = await self._upload(request, context)
        return json_reply(_uploaded(name, await store.add_version(name, data)), status=201)

    async def delete(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        store = await self._pipeline.model_store(context_of(request, FRONTEND, name), name)
        await store.delete_model(name)
        return json_reply({"name": name, "deleted": True})

    async def predict(self, request: web.Request) -> web.Response:
        """`{"inputs": [v2 tensors]}` answers in v2 form; `{"inputs": {...}}` (TF Serving's
        columnar form) answers `{"outputs": ...}` as TF Serving would."""
        ref = ModelRef(request.match_info["model"])
        context = infer_context(request, FRONTEND, ref.model)
        budget = request.app[CONFIG_KEY].decode
        json = await read_json(request, self._pipeline, context)
        document = json.document
        if isinstance(document, dict) and isinstance(document.get("inputs"), list) and all(
                isinstance(t, dict) and "datatype" in t for t in document["inputs"]):
            body = await json.parse(lambda d: v2_json.parse_infer(d, budget=budget))
            response = await self._pipeline.infer(InferRequest(
                ref=ref, context=context, inputs=body.inputs, outputs=body.outputs,
                id=body.id))
            reply = v2_json.encode_infer(response)
        else:
            if not isinstance(document, dict) or "inputs" not in document:
                raise BadRequest("body must be {\"inputs\": ...}: a list of v2 tensors or "
                                 "TF Serving's columnar inputs")
            columns = tfserving_json.parse_predict({"inputs": document["inputs"]}, budget=budget)
            response = await self._pipeline.infer(InferRequest(
                ref=ref, context=context, decoder=columns.decode, decode_off_loop=json.large))
            reply = tfserving_json.encode_predict(response.outputs, row_format=False)
        return json_reply(reply, nonfinite=jsonio.has_nonfinite(response.outputs))


    async def _upload(self, request: web.Request, context: RequestContext
                      ) -> tuple[str, bytes]:
        """The model name (form field or query) and the ONNX bytes (form file or raw body),
        read once the caller may manage models."""
        limit = request.app[CONFIG_KEY].max_upload_bytes
        name = request.query.get("name", "")
        if request.content_type != "multipart/form-data":
            data = await read_body(request, self._pipeline, context, limit=limit,
                                   what="max_upload_bytes")
        else:
            name, data = await _read_form(request, name, limit)
        if not data:
            raise BadRequest("no model file: send the ONNX bytes as the body or a 'file' form "
                             "field")
        return name, data


async def _read_form(request: web.Request, name: str, limit: int) -> tuple[str, bytes]:
    data = b""
    try:
        form = await request.multipart()
        async for part in form:
            if not isinstance(part, BodyPartReader):
                if isinstance(part, MultipartReader):
                    raise BadRequest("nested multipart forms are not accepted")
                continue
            if part.name == "name":
                raw = await _read_part(part, MAX_NAME_BYTES, "the 'name' field", "")
                try:
                    name = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise BadRequest("the 'name' field must be UTF-8 text") from None
            elif part.name == "file":
                data = await _read_part(part, limit, "the model file", " ([server] "
                                        "max_upload_bytes)")
    except (ValueError, AssertionError, RuntimeError) as exc:
        # aiohttp's multipart reader reports a bad boundary or a malformed part this way
        raise BadRequest(f"malformed multipart/form-data body: {type(exc).__name__}") from None
    return name, data


async def _read_part(part: BodyPartReader, limit: int, what: str, key: str) -> bytes:
    data = bytearray()
    while chunk := await part.read_chunk():
        data += chunk
        if len(data) > limit:
            raise PayloadTooLarge(f"{what} exceeds the limit of {limit} bytes{key}")
    return bytes(data)


def _versions(statuses: list[VersionStatus]) -> list[dict[str, str]]:
    return [{"version": s.version, "state": s.state, "error": s.error} for s in statuses]


def _uploaded(name: str, status: VersionStatus) -> dict[str, str]:
    return {"name": name, "version": status.version, "state": status.state}
