"""Managing in-process models over REST: list, upload (POST), new version (PUT), delete, and
a simple predict. Uploads take a raw ONNX body or a multipart form with a `file` field."""

from __future__ import annotations

from typing import Any

from aiohttp import BodyPartReader, web

from gateway.codecs import jsonio, tfserving_json, v2_json
from gateway.errors import BadRequest, NotFound, PayloadTooLarge
from gateway.pipeline import Pipeline
from gateway.rest.common import CONFIG_KEY, MODEL_KEY, context_of, json_reply, read_body, read_json
from gateway.types import InferRequest, ModelRef, VersionStatus

FRONTEND = "models"


class ManagementRoutes:
    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/models", self.list_models),
                web.post("/models", self.create),
                web.get("/models/{model}", self.describe),
                web.put("/models/{model}", self.add_version),
                web.delete("/models/{model}", self.delete),
                web.post("/models/{model}/predict", self.predict)]

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
        name, data = await _upload(request)
        if not name:
            raise BadRequest("name the model: ?name=NAME or a 'name' form field")
        request[MODEL_KEY] = name
        store = await self._pipeline.model_store(context, name)
        status = await store.create_model(name, data)
        return json_reply(_uploaded(name, status), status=201)

    async def add_version(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        context = context_of(request, FRONTEND, name)
        _, data = await _upload(request)
        store = await self._pipeline.model_store(context, name)
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
        context = context_of(request, FRONTEND, ref.model)
        document = await read_json(request)
        if isinstance(document, dict) and isinstance(document.get("inputs"), list) and all(
                isinstance(t, dict) and "datatype" in t for t in document["inputs"]):
            body = v2_json.parse_infer(document)
            response = await self._pipeline.infer(InferRequest(
                ref=ref, context=context, inputs=body.inputs, outputs=body.outputs,
                id=body.id))
            reply = v2_json.encode_infer(response)
        else:
            if not isinstance(document, dict) or "inputs" not in document:
                raise BadRequest("body must be {\"inputs\": ...}: a list of v2 tensors or "
                                 "TF Serving's columnar inputs")
            columns = tfserving_json.parse_predict({"inputs": document["inputs"]})
            response = await self._pipeline.infer(InferRequest(
                ref=ref, context=context, decoder=columns.decode))
            reply = tfserving_json.encode_predict(response.outputs, row_format=False)
        return json_reply(reply, nonfinite=jsonio.has_nonfinite(response.outputs))


async def _upload(request: web.Request) -> tuple[str, bytes]:
    """The model name (form field or query) and the ONNX bytes (form file or raw body)."""
    limit = request.app[CONFIG_KEY].max_upload_bytes
    name = request.query.get("name", "")
    if request.content_type != "multipart/form-data":
        data = await read_body(request, limit)
    else:
        data = b""
        async for part in await request.multipart():
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "name":
                name = await part.text()
            elif part.name == "file":
                data = await _read_part(part, limit)
    if not data:
        raise BadRequest("no model file: send the ONNX bytes as the body or a 'file' form field")
    return name, data


async def _read_part(part: BodyPartReader, limit: int) -> bytes:
    data = bytearray()
    while chunk := await part.read_chunk():
        data += chunk
        if len(data) > limit:
            raise PayloadTooLarge(f"model file exceeds the limit of {limit} bytes")
    return bytes(data)


def _versions(statuses: list[VersionStatus]) -> list[dict[str, str]]:
    return [{"version": s.version, "state": s.state, "error": s.error} for s in statuses]


def _uploaded(name: str, status: VersionStatus) -> dict[str, str]:
    return {"name": name, "version": status.version, "state": status.state}
