"""The admin API for routing policies: show the active one and its history, replace it (or only
validate a replacement), roll back. Every call needs the ADMIN verb."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.authz import Verb
from gateway.errors import BadRequest
from gateway.pipeline import Pipeline
from gateway.policy.editor import ADMIN, PolicyEditor
from gateway.policy.store import PolicyVersion
from gateway.rest.common import context_of, json_reply, read_body
from gateway.tomlconfig import ConfigError

FRONTEND = "admin"
SOURCE_NAME = "admin.toml"  # what errors and GET call a policy sent with PUT


class AdminRoutes:
    def __init__(self, pipeline: Pipeline, editor: PolicyEditor) -> None:
        self._pipeline = pipeline
        self._editor = editor

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/admin/policies", self.show),
                web.put("/admin/policies", self.replace),
                web.post("/admin/policies/rollback", self.rollback)]

    async def show(self, request: web.Request) -> web.Response:
        await self._pipeline.admit(context_of(request, FRONTEND), Verb.ADMIN)
        store = self._editor.store
        active = store.active.version
        return json_reply({"active": {**_summary(active), "sources": dict(active.sources)},
                           "history": [_summary(v) for v in store.history()]})

    async def replace(self, request: web.Request) -> web.Response:
        """Body: the policy as TOML. `?dry_run=true` only validates it."""
        context = context_of(request, FRONTEND)
        await self._pipeline.admit(context, Verb.ADMIN)
        dry_run = request.query.get("dry_run", "false")
        if dry_run not in ("true", "false"):
            raise BadRequest(f"dry_run must be true or false, got {dry_run!r}")
        body = await read_body(request, self._pipeline, context)
        try:
            sources = ((SOURCE_NAME, body.decode("utf-8")),)
        except UnicodeDecodeError:
            raise BadRequest("the policy must be UTF-8 TOML text") from None
        try:
            if dry_run == "true":
                policy = self._editor.validate(sources)
                return json_reply({"valid": True, "routes": [r.name for r in policy.routes],
                                   "limits": [rule.name for rule in policy.limits]})
            version = await self._editor.apply(sources, ADMIN)
        except ConfigError as exc:
            raise BadRequest(f"invalid policy: {exc}") from None
        return json_reply({"active": _summary(version)})

    async def rollback(self, request: web.Request) -> web.Response:
        await self._pipeline.admit(context_of(request, FRONTEND), Verb.ADMIN)
        try:
            version = await self._editor.rollback()
        except ConfigError as exc:  # the earlier policy no longer fits this gateway
            raise BadRequest(f"cannot restore the earlier policy: {exc}") from None
        return json_reply({"active": _summary(version)})


def _summary(version: PolicyVersion) -> dict[str, Any]:
    return {"version": version.number, "hash": version.hash, "origin": version.origin,
            "parent": version.parent, "applied_at": version.applied_at,
            "files": [name for name, _ in version.sources]}
