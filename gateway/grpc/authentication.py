"""Authenticates a gRPC call from its metadata before a byte of its message is read, so an
anonymous caller cannot make the gateway receive, parse or decode a request.

grpc.aio asks the interceptors for a method's handler once the call's headers have arrived and
only reads the message when the handler it gets wants it. A refused call gets a handler that
never reads its message (a client-streaming one whose stream is left alone: the message stays
with the client, beyond HTTP/2's flow-control window) and ends the call UNAUTHENTICATED, like
REST's 401; an admitted call keeps its own handler, run as the principal it proved to be.
Health, reflection and the v2 server-level RPCs (live, ready, metadata) stay open.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping

import grpc

from gateway.grpc.calls import CallFacts, GrpcCalls, with_facts
from gateway.pipeline import Pipeline
from gateway.types import RequestContext


class Authentication(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    def __init__(self, pipeline: Pipeline, calls: GrpcCalls,
                 protected: Mapping[str, str]) -> None:
        """`protected`: method path ("/package.Service/Method") -> its front door's name."""
        self._pipeline = pipeline
        self._calls = calls
        self._protected = protected

    async def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails],
                                         Awaitable[grpc.RpcMethodHandler | None]],
            details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        frontend = self._protected.get(details.method)
        if handler is None or frontend is None:
            return handler
        started = time.perf_counter()
        call = self._calls.context_from(details.invocation_metadata, None, frontend)
        facts = CallFacts(details.method, call.request_id)
        try:
            await self._pipeline.authenticate(call)
        except Exception as exc:  # `fail` renders what is not ours as INTERNAL, logged
            return with_facts(facts, self._refusal(exc, started, call))
        if handler.request_streaming or handler.response_streaming:
            return handler  # none is served yet; the pipeline would authenticate it again
        facts.principal = call.principal
        return with_facts(facts, handler)

    def _refusal(self, error: Exception, started: float,
                 call: RequestContext) -> grpc.RpcMethodHandler:
        """A handler that ends the call with `error` and leaves its message unread."""
        async def refuse(requests: object, context: grpc.aio.ServicerContext) -> None:
            await self._calls.fail(context, call.frontend, "", error, started, call)

        return grpc.stream_unary_rpc_method_handler(refuse)
