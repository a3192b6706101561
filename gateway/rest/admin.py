"""The admin API for routing policies: show the active one and its history, replace it whole
(PUT) or section by section (PATCH), preview either (`?dry_run=true`: the diff), roll back.
Every call needs the ADMIN verb; every change is logged with its author and diff."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.authz import Verb
from gateway.errors import BadRequest, Conflict
from gateway.pipeline import Pipeline
from gateway.policy.editor import ADMIN, Edit, PolicyEditor
from gateway.policy.loader import SECTIONS
from gateway.policy.model import Policy, Sources
from gateway.policy.sections import CannotKeep, patched, sections_set
from gateway.policy.store import ActivePolicy, PolicyVersion
from gateway.rest.common import context_of, json_reply, read_body
from gateway.tomlconfig import ConfigError
from gateway.types import RequestContext

FRONTEND = "admin"
SOURCE_NAME = "admin.toml"  # what errors and GET call a policy sent with PUT or PATCH
REPLACE_ALL = "all"  # PUT ?replace=all: sections the document leaves out are removed


class AdminRoutes:
    def __init__(self, pipeline: Pipeline, editor: PolicyEditor) -> None:
        self._pipeline = pipeline
        self._editor = editor

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/admin/policies", self.show),
                web.put("/admin/policies", self.replace),
                web.patch("/admin/policies", self.patch),
                web.post("/admin/policies/rollback", self.rollback)]

    async def show(self, request: web.Request) -> web.Response:
        await self._pipeline.admit(context_of(request, FRONTEND), Verb.ADMIN)
        store = self._editor.store
        active = store.active.version
        return json_reply({"active": {**_summary(active), "sources": dict(active.sources)},
                           "history": [_summary(v) for v in store.history()]})

    async def replace(self, request: web.Request) -> web.Response:
        """Body: the whole policy as TOML. A section the active policy has and the body does
        not set is refused (409) unless `?replace=all`: routes and limits are one document, and
        a body with only routes must not silently remove every limit."""
        context, text = await self._document(request)
        replace = request.query.get("replace")
        if replace not in (None, REPLACE_ALL):
            raise BadRequest(f"replace must be {REPLACE_ALL!r} (or absent), got {replace!r}")
        sources = ((SOURCE_NAME, text),)

        def edit(active: ActivePolicy) -> Sources:
            if replace is None:
                _refuse_drops(active.policy, sources)
            return sources

        return await self._change(request, context, edit)

    async def patch(self, request: web.Request) -> web.Response:
        """Body: TOML setting some sections; each replaces the active policy's, the others are
        kept as written (`limits = []` removes every limit)."""
        context, text = await self._document(request)

        def edit(active: ActivePolicy) -> Sources:
            try:
                return patched(active.version.sources, SOURCE_NAME, text)
            except CannotKeep as exc:
                raise Conflict(f"cannot patch the active policy: {exc}") from None

        return await self._change(request, context, edit)

    async def rollback(self, request: web.Request) -> web.Response:
        context = context_of(request, FRONTEND)
        await self._pipeline.admit(context, Verb.ADMIN)
        try:
            version = await self._editor.rollback(context.principal.subject)
        except ConfigError as exc:  # the earlier policy no longer fits this gateway
            raise BadRequest(f"cannot restore the earlier policy: {exc}") from None
        return json_reply({"active": _summary(version)})

    async def _document(self, request: web.Request) -> tuple[RequestContext, str]:
        context = context_of(request, FRONTEND)
        await self._pipeline.admit(context, Verb.ADMIN)
        body = await read_body(request, self._pipeline, context)
        try:
            return context, body.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("the policy must be UTF-8 TOML text") from None

    async def _change(self, request: web.Request, context: RequestContext,
                      edit: Edit) -> web.Response:
        """Apply `edit`, or with `?dry_run=true` show what it would run and change."""
        dry_run = request.query.get("dry_run", "false")
        if dry_run not in ("true", "false"):
            raise BadRequest(f"dry_run must be true or false, got {dry_run!r}")
        try:
            if dry_run == "true":
                sources, policy, diff = self._editor.preview(edit)
                return json_reply({"valid": True, "routes": [r.name for r in policy.routes],
                                   "limits": [rule.name for rule in policy.limits],
                                   "changes": diff.as_json(), "diff": diff.text,
                                   "sources": dict(sources)})
            version = await self._editor.edit(edit, ADMIN, context.principal.subject)
        except ConfigError as exc:
            raise BadRequest(f"invalid policy: {exc}") from None
        return json_reply({"active": _summary(version)})


def _refuse_drops(active: Policy, sources: Sources) -> None:
    """Conflict if `sources` set no section the active policy has something in."""
    kept = sections_set(sources)
    held = {"routes": [r.name for r in active.routes],
            "limits": [rule.name for rule in active.limits]}
    dropped = {section: held[section] for section in SECTIONS
               if held[section] and section not in kept}
    if dropped:
        which = "; ".join(f"{section}: {', '.join(names)}" for section, names in dropped.items())
        raise Conflict(f"the policy sent sets no {' or '.join(dropped)}; PUT would remove the "
                       f"active ones ({which}). Send them too, PATCH /admin/policies to replace "
                       f"only the sections sent, or PUT ?replace={REPLACE_ALL} to remove them")


def _summary(version: PolicyVersion) -> dict[str, Any]:
    return {"version": version.number, "hash": version.hash, "origin": version.origin,
            "author": version.author, "parent": version.parent,
            "applied_at": version.applied_at, "files": [name for name, _ in version.sources]}
