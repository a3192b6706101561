"""What every gRPC servicer shares: the call's context (metadata, deadline, request id, the
principal the authentication interceptor verified) and turning failures into status codes with
a readable message, recorded like REST's (metrics, access line); every reply's trailing
metadata carries the request id. The server span comes from the tracing interceptor
(`gateway.grpc.server`)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import grpc
from multidict import CIMultiDict, CIMultiDictProxy
from opentelemetry.trace import Tracer

from gateway.admission import InflightLimits
from gateway.auth import ANONYMOUS
from gateway.codecs.budget import DecodeBudget
from gateway.config import ServerConfig
from gateway.drain import CUT_SHORT, Drain
from gateway.errors import GatewayError, ShuttingDown, log_level
from gateway.grpc.tracing import peer_attributes
from gateway.telemetry import request_ids, spans
from gateway.telemetry.requests import RequestRecorder
from gateway.tls.subject import grpc_peer_subject
from gateway.types import Principal, RequestContext

T = TypeVar("T")
log = logging.getLogger("gateway.errors")

#: A servicer method with a unary reply, as grpc.aio calls it: (message or messages, context).
Behavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


@dataclass(slots=True)
class CallFacts:
    """What `Authentication` (gateway.grpc.authentication) learned of a call before its servicer
    runs: the method, the request id, the principal it proved to be (None: refused), and the
    size of its message once read. Set around the servicer method (`with_facts`)."""

    method: str
    request_id: str
    principal: Principal | None = None
    bytes_in: int = 0


_FACTS: ContextVar[CallFacts | None] = ContextVar("gateway_grpc_call", default=None)


def with_facts(facts: CallFacts, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """`handler` (unary or client-streaming, with a unary reply), run with `facts` at hand: a
    verified principal's calls start authenticated, and the message's size is taken as it is
    deserialized."""
    read = handler.request_deserializer
    behavior: Behavior = handler.unary_unary or handler.stream_unary

    def deserialize(message: bytes) -> Any:
        facts.bytes_in = len(message)
        return message if read is None else read(message)

    async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
        token = _FACTS.set(facts)
        try:
            return await behavior(request, context)
        finally:
            _FACTS.reset(token)

    make = (grpc.unary_unary_rpc_method_handler if handler.unary_unary is not None
            else grpc.stream_unary_rpc_method_handler)
    return make(run, request_deserializer=deserialize,
                response_serializer=handler.response_serializer)


def headers_of(metadata: Iterable[tuple[str, str | bytes]] | None) -> CIMultiDictProxy[str]:
    """The text metadata as headers, as REST has them: a repeated key stays repeated (a second
    `authorization` is refused, not silently taken), `-bin` values are left out."""
    return CIMultiDictProxy(CIMultiDict(
        (key, value) for key, value in metadata or () if isinstance(value, str)))


class GrpcCalls:
    def __init__(self, config: ServerConfig, recorder: RequestRecorder,
                 tracer: Tracer | None, inflight: InflightLimits,
                 drain: Drain | None = None) -> None:
        self._timeout_s = config.request_timeout_ms / 1000.0
        self._proxies = config.trusted_proxies
        # only under mTLS is there a client certificate: reading the auth context costs ~1 µs
        self._mutual_tls = config.tls is not None and config.tls.mutual
        self._drain = drain or Drain()
        self._inflight = inflight
        self._recorder = recorder
        self._tracer = tracer
        self._budget = config.decode

    @property
    def budget(self) -> DecodeBudget:
        """What the servicers' decoders may build for one request (`[server.decode]`)."""
        return self._budget

    def context_of(self, context: grpc.aio.ServicerContext, frontend: str) -> RequestContext:
        subject = grpc_peer_subject(context) if self._mutual_tls else None
        call = self.context_from(context.invocation_metadata(), context.time_remaining(),
                                 frontend, subject)
        call.client_address = self._proxies.client(peer_address(context.peer()), call.headers)
        return call

    def context_from(self, metadata: Iterable[tuple[str, str | bytes]] | None,
                     remaining: float | None, frontend: str,
                     tls_subject: str | None = None) -> RequestContext:
        """The client's deadline becomes the request's (never beyond the configured one); the
        request id is the one `Authentication` took, else the caller's `x-request-id`.
        `Authentication` cannot see the connection's client certificate: a call it let in as
        anonymous that has one is authenticated again, by the pipeline, knowing it."""
        timeout = self._timeout_s if remaining is None else min(self._timeout_s, remaining)
        headers = headers_of(metadata)
        facts = _FACTS.get()
        call = RequestContext(
            frontend=frontend, headers=headers, deadline=time.monotonic() + timeout,
            request_id=facts.request_id if facts is not None
            else request_ids.accept(headers.get(request_ids.METADATA_KEY)),
            tls_subject=tls_subject)
        if facts is not None and facts.principal is not None and not (
                tls_subject is not None and facts.principal is ANONYMOUS):
            call.principal, call.authenticated = facts.principal, True
        return call

    async def run_infer(self, context: grpc.aio.ServicerContext, frontend: str, model: str,
                        call: Callable[[RequestContext], Awaitable[T]]) -> T:
        """`run` for a call that runs a model: it takes an in-flight slot (as REST's do)
        before its tensors are decoded, or is shed with UNAVAILABLE."""
        return await self.run(context, frontend, model, call, shed=True)

    async def run(self, context: grpc.aio.ServicerContext, frontend: str, model: str,
                  call: Callable[[RequestContext], Awaitable[T]], *, shed: bool = False) -> T:
        if self._tracer is None:
            return await self._run(context, frontend, model, call, shed)
        token = spans.bind(self._tracer)
        try:
            return await self._run(context, frontend, model, call, shed)
        finally:
            spans.unbind(token)

    async def _run(self, context: grpc.aio.ServicerContext, frontend: str, model: str,
                   call: Callable[[RequestContext], Awaitable[T]], shed: bool) -> T:
        started = time.perf_counter()
        call_context = self.context_of(context, frontend)
        bound = request_ids.bind(call_context.request_id)  # for backend calls and log lines
        try:
            if shed:
                self._inflight.acquire(model)
                try:
                    result = await self._counted(call, call_context)
                finally:
                    self._inflight.release(model)
            else:
                result = await self._counted(call, call_context)
        except Exception as exc:
            await self.fail(context, frontend, model, exc, started, call_context)
        except asyncio.CancelledError:  # the client cancelled, or its connection went
            self._recorder.finished(frontend, model, "CANCELLED", "ClientCancelled",
                                    time.perf_counter() - started, call_context,
                                    **self._recorded(context, call_context, None))
            raise
        finally:
            request_ids.unbind(bound)
        self._recorder.finished(frontend, model, "OK", "", time.perf_counter() - started,
                                call_context, **self._recorded(context, call_context, result))
        context.set_trailing_metadata(_metadata(call_context, call_context.reply_headers))
        return result

    async def _counted(self, call: Callable[[RequestContext], Awaitable[T]],
                       call_context: RequestContext) -> T:
        """`call`, counted in flight for a drain; cut short by it, it fails `ShuttingDown`."""
        task = self._drain.enter()
        try:
            return await call(call_context)
        except asyncio.CancelledError:
            if not self._drain.was_cut():
                raise
            raise ShuttingDown(CUT_SHORT, retry_after_s=1) from None
        finally:
            self._drain.leave(task)

    async def fail(self, context: grpc.aio.ServicerContext, frontend: str, model: str,
                   exc: Exception, started: float, call_context: RequestContext) -> NoReturn:
        """Ends the call with `exc`'s status (INTERNAL, logged, for one that is not ours) and
        records it; `started` is when the call began (`time.perf_counter()`)."""
        if isinstance(exc, GatewayError):
            error, code, message = type(exc).__name__, exc.grpc_code, exc.message
            trailing = _metadata(call_context,
                                 {**call_context.reply_headers, **exc.reply_headers()})
            log.log(log_level(exc), "gRPC %s -> %s %s: %s", frontend, code, error, message)
        else:
            log.error("gRPC %s -> INTERNAL: unhandled error", frontend, exc_info=exc)
            error, code, message, trailing = ("InternalError", "INTERNAL",
                                              "internal error (logged by the gateway)",
                                              _metadata(call_context, {}))
        self._recorder.finished(frontend, model, code, error, time.perf_counter() - started,
                                call_context, **self._recorded(context, call_context, None))
        await context.abort(grpc.StatusCode[code], message, trailing_metadata=trailing)
        raise AssertionError("abort returns only by raising")

    def _recorded(self, context: grpc.aio.ServicerContext, call_context: RequestContext,
                  reply: Any) -> dict[str, Any]:
        """What the access line says of a call besides its outcome: its id and method, and
        (when access lines are written) who sent it and the message bytes each way."""
        facts = _FACTS.get()
        fields: dict[str, Any] = {"request_id": call_context.request_id,
                                  "request": facts.method if facts is not None else ""}
        if self._recorder.logs:
            fields.update(client=peer_address(context.peer()),
                          user_agent=call_context.headers.get("user-agent", ""),
                          bytes_in=facts.bytes_in if facts is not None else 0,
                          bytes_out=reply.ByteSize() if reply is not None else 0)
        return fields


def peer_address(peer: str) -> str:
    """gRPC's peer ("ipv4:10.0.0.7:51234") as the client's address, as REST's access line has
    it ("10.0.0.7": no port); a kind it cannot read, as it is."""
    kind, _, address = peer.partition(":")
    if kind == "ipv4":  # every call reads it (the client_address limit key): kept cheap
        return address.rpartition(":")[0] or peer
    return str(peer_attributes(peer).get("network.peer.address", peer))


def _metadata(call_context: RequestContext,
              headers: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """A reply's trailing metadata: the request id, then `headers` (keys in lower case, as
    gRPC metadata keys are)."""
    return ((request_ids.METADATA_KEY, call_context.request_id),
            *((key.lower(), value) for key, value in headers.items()))
