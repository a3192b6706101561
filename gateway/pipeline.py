"""The request path, top to bottom: every front end calls this, whatever dialect it speaks.

    authenticate → authorize → route → decode → rate limit → call the adapter (under deadline)

Routing comes before the rate limit because a TF Serving JSON body can only be decoded with
the target's signature, and the limit's cost is the number of rows in the decoded batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from adapters.base import ModelStore
from gateway.auth import Authenticator
from gateway.authz import Authorizer, Verb
from gateway.errors import DeadlineExceeded, MethodNotAllowed, NotFound
from gateway.ratelimit import RateLimiter
from gateway.routing import Router, Target
from gateway.types import (
    InferRequest,
    InferResponse,
    ModelMetadata,
    ModelRef,
    RequestContext,
    Tensors,
    VersionStatus,
)

T = TypeVar("T")
VARIANT_HEADER = "x-gateway-variant"


class Pipeline:
    def __init__(self, authenticator: Authenticator, authorizer: Authorizer,
                 limiter: RateLimiter, router: Router, store: ModelStore | None) -> None:
        self._authenticator = authenticator
        self._authorizer = authorizer
        self._limiter = limiter
        self._router = router
        self._store = store

    async def infer(self, request: InferRequest) -> InferResponse:
        context = request.context
        target = await self._admit(context, Verb.PREDICT, request.ref)
        request.ref = target.ref
        if request.decoder is not None:
            signature = await target.adapter.model_metadata(target.ref)
            request.inputs = request.decoder(signature)
        await self._limiter.check(request, cost=batch_rows(request.inputs))
        response = await within_deadline(target.adapter.infer(request), context)
        response.variant = target.variant
        if target.variant is not None:
            context.reply_headers[VARIANT_HEADER] = target.variant
        response.id = request.id
        return response

    async def metadata(self, ref: ModelRef, context: RequestContext) -> ModelMetadata:
        target = await self._admit(context, Verb.READ, ref)
        return await within_deadline(target.adapter.model_metadata(target.ref), context)

    async def status(self, ref: ModelRef, context: RequestContext) -> list[VersionStatus]:
        target = await self._admit(context, Verb.READ, ref)
        return await within_deadline(target.adapter.model_status(target.ref), context)

    async def model_names(self, context: RequestContext) -> list[str]:
        context.principal = await self._authenticator.authenticate(context)
        self._authorizer.authorize(context.principal, Verb.READ, None)
        return self._router.model_names()

    async def model_store(self, context: RequestContext, model: str | None) -> ModelStore:
        """The store that manages `model` (or new models), once the caller may manage it."""
        context.principal = await self._authenticator.authenticate(context)
        self._authorizer.authorize(context.principal, Verb.MANAGE, model)
        if model is not None:
            try:
                adapter = self._router.route(ModelRef(model), context).adapter
            except NotFound:
                adapter = None
            if adapter is not None and adapter is not self._store:  # type: ignore[comparison-overlap]
                raise MethodNotAllowed(f"model {model!r} is served by backend "
                                       f"{adapter.name!r}, which the gateway does not manage")
        if self._store is None:
            raise MethodNotAllowed("no in-process model store is configured")
        return self._store

    async def _admit(self, context: RequestContext, verb: Verb, ref: ModelRef) -> Target:
        context.principal = await self._authenticator.authenticate(context)
        self._authorizer.authorize(context.principal, verb, ref.model)
        return self._router.route(ref, context)


async def within_deadline(call: Awaitable[T], context: RequestContext) -> T:
    remaining = context.remaining()
    if remaining <= 0:
        if asyncio.iscoroutine(call):
            call.close()
        raise DeadlineExceeded("deadline exceeded before the request reached the backend")
    try:
        async with asyncio.timeout(remaining):
            return await call
    except TimeoutError:
        raise DeadlineExceeded(
            f"deadline of {remaining * 1000:.0f} ms exceeded waiting for the backend") from None


def batch_rows(inputs: Tensors) -> int:
    """Rows in a request's batch: the leading dim of its first input (1 for scalars)."""
    for array in inputs.values():
        return int(array.shape[0]) if array.ndim else 1
    return 1
