"""The request path, top to bottom: every front end calls this, whatever dialect it speaks.

    authenticate → authorize → route → decode → rate limit → call the adapter (under deadline)
                                                            → (maybe) mirror, after the reply

Routing comes before the rate limit because a TF Serving JSON body can only be decoded with
the target's signature, and the limit's cost is the number of rows in the decoded batch. A
routed request may carry fallbacks: a target that is down or overloaded (`Unavailable`) hands
the call to the next one; any other failure, a client's mistake included, is the answer. Each
target gets the request prepared for itself: a body-passing backend the client's bytes, any
other the body decoded with its own signature; a fallback that decodes to more rows than were
charged is charged the difference.

Steps trace themselves (`gateway.telemetry.spans`): authentication and the rate limit in their
own objects, routing here, each backend call in its adapter.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from gateway.auth import Authenticator
from gateway.authz import Authorizer, Verb
from gateway.backend import ModelStore, passes_body
from gateway.errors import DeadlineExceeded, MethodNotAllowed, NotFound, Unavailable
from gateway.metrics import children
from gateway.policy.metrics import RoutingMetrics
from gateway.policy.mirror import Mirror
from gateway.ratelimit import RateLimiter
from gateway.routing import Router, Target
from gateway.telemetry import spans
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
log = logging.getLogger(__name__)


class Pipeline:
    def __init__(self, authenticator: Authenticator, authorizer: Authorizer,
                 limiter: RateLimiter, router: Router, store: ModelStore | None,
                 mirror: Mirror, metrics: RoutingMetrics) -> None:
        self._authenticator = authenticator
        self._authorizer = authorizer
        self._limiter = limiter
        self._router = router
        self._store = store
        self._mirror = mirror
        self._metrics = metrics
        self._backend_latency = children(metrics.backend_latency)

    async def infer(self, request: InferRequest) -> InferResponse:
        context = request.context
        routed = await self._admit(context, Verb.PREDICT, request.ref)
        # one deadline for the rest (signature, decode, limiter, backends, fallbacks): a timer
        # per step cost more than the steps that never wait
        response = await within_deadline(self._serve(request, routed.candidates()), context)
        if response.variant is not None:
            context.reply_headers[VARIANT_HEADER] = response.variant
        context.version, context.variant = response.version, response.variant or ""
        response.id = request.id
        if routed.mirror is not None:
            self._mirror.send(request, response, routed.mirror, self.prepare)
        return response

    async def _serve(self, request: InferRequest, targets: Sequence[Target]) -> InferResponse:
        """The answer of the first target available: the chosen one, then the fallbacks."""
        charged = 0  # rows the limiter has admitted so far
        for served, target in enumerate(targets):
            fallible = served < len(targets) - 1
            try:
                await self.prepare(request, target)
            except Unavailable as exc:
                if not fallible:
                    raise
                self._fell_back(target, exc)
                continue
            # outside the fallback: a limiter that cannot decide is not the target's failure
            rows = batch_rows(request.inputs)
            if rows > charged:
                await self._limiter.check(request, cost=rows - charged)
                charged = rows
            try:
                response = await self._call_adapter(request, target)
            except Unavailable as exc:
                if not fallible:
                    raise
                self._fell_back(target, exc)
                continue
            response.variant = target.variant
            return response
        raise AssertionError("the last target answers or raises")

    async def prepare(self, request: InferRequest, target: Target) -> None:
        """Make `request` what `target` takes: the client's body as it is for a body-passing
        backend, else tensors decoded with the target's own signature (an answer to
        `model_metadata`, so a backend that is down shows as `Unavailable` here). The caller
        bounds it in time."""
        request.ref = target.ref
        if request.decoder is None or (request.body is not None
                                       and passes_body(target.adapter)):
            return
        signature = await target.adapter.model_metadata(target.ref)
        request.inputs = await decode(request, signature)

    async def metadata(self, ref: ModelRef, context: RequestContext) -> ModelMetadata:
        routed = await self._admit(context, Verb.READ, ref)
        _, metadata = await self._first_available(
            routed.candidates(), lambda t: within_deadline(t.adapter.model_metadata(t.ref),
                                                           context))
        return metadata

    async def status(self, ref: ModelRef, context: RequestContext) -> list[VersionStatus]:
        routed = await self._admit(context, Verb.READ, ref)
        _, statuses = await self._first_available(
            routed.candidates(), lambda t: within_deadline(t.adapter.model_status(t.ref),
                                                           context))
        return statuses

    async def model_names(self, context: RequestContext) -> list[str]:
        await self.admit(context, Verb.READ)
        return self._router.model_names()

    async def model_store(self, context: RequestContext, model: str | None) -> ModelStore:
        """The store that manages `model` (or new models), once the caller may manage it."""
        await self.admit(context, Verb.MANAGE, model)
        if model is not None:
            try:
                adapter = self._router.route(ModelRef(model), context).adapter
            except NotFound:
                adapter = None
            if adapter is not None and (self._store is None or adapter.name != self._store.name):
                raise MethodNotAllowed(f"model {model!r} is served by backend "
                                       f"{adapter.name!r}, which the gateway does not manage")
        if self._store is None:
            raise MethodNotAllowed("no in-process model store is configured")
        return self._store

    async def authenticate(self, context: RequestContext) -> None:
        """Step 1 alone: doors call it from the headers, before they read or decode a body,
        so an anonymous caller cannot make the gateway spend on one."""
        if not context.authenticated:
            context.principal = await self._authenticator.authenticate(context)
            context.authenticated = True

    async def admit(self, context: RequestContext, verb: Verb, model: str | None = None) -> None:
        """Steps 1 and 2, for every call, the admin API's included."""
        await self.authenticate(context)
        self._authorizer.authorize(context.principal, verb, model)

    async def _admit(self, context: RequestContext, verb: Verb, ref: ModelRef) -> Target:
        await self.admit(context, verb, ref.model)
        with spans.step("route") as span:
            target = self._router.route(ref, context)
            if span.is_recording():
                span.set_attributes(route_attributes(target))
            return target

    async def _call_adapter(self, request: InferRequest, target: Target) -> InferResponse:
        started = time.perf_counter()
        try:
            return await target.adapter.infer(request)
        finally:
            self._backend_latency(target.adapter.name, self._metrics.model_label(
                target.ref.model)).observe(time.perf_counter() - started)

    async def _first_available(self, targets: Sequence[Target],
                               call: Callable[[Target], Awaitable[T]]) -> tuple[int, T]:
        """`call` on each target in turn until one is available: its index and answer."""
        *fallible, last = targets
        for index, target in enumerate(fallible):
            try:
                return index, await call(target)
            except Unavailable as exc:
                self._fell_back(target, exc)
        return len(fallible), await call(last)

    def _fell_back(self, target: Target, exc: Unavailable) -> None:
        log.info("route %s: %s unavailable, trying the next target: %s",
                 target.route, target.adapter.name, exc.message)
        self._metrics.fallbacks.labels(target.route, target.adapter.name).inc()


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


async def decode(request: InferRequest, signature: ModelMetadata) -> Tensors:
    decoder = request.decoder
    assert decoder is not None
    if request.decode_off_loop:
        return await asyncio.to_thread(decoder, signature)
    return decoder(signature)


def route_attributes(target: Target) -> dict[str, str]:
    """What the route span says about the target chosen (fallbacks may answer instead)."""
    ref = target.ref
    return {"gateway.route": target.route, "gateway.variant": target.variant or "",
            "gateway.adapter": target.adapter.name, "gateway.model": ref.model,
            "gateway.model.version": ref.version or ref.label or ""}


def batch_rows(inputs: Tensors) -> int:
    """Rows in a request's batch: the leading dim of its first input (1 for scalars, and for
    a body passed as it is: one call)."""
    for array in inputs.values():
        return int(array.shape[0]) if array.ndim else 1
    return 1
