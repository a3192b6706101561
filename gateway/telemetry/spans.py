"""The spans code on the request path makes: pipeline steps, the batcher's batches.

A front door binds its gateway's tracer to the request's context (`bind`); everything the
request reaches, in this task or in tasks it spawns (the batcher's, the mirror's), finds it
there, so adapters and steps need no tracer passed in. Untraced (tracing off, or no request
around) every helper returns a shared no-op at the cost of one context-variable read; so it
does inside a request the sampler dropped (its children would be dropped too).

With `detail = "request"` (the gateway's `RequestTracer.steps` false) the steps make no spans
and the batcher links nothing: a request is its server span and its backend client spans.

Spans are ended by small context managers rather than `start_as_current_span` (a generator,
twice the cost), and only spans that have children become the current span.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Final

from opentelemetry import context, trace
from opentelemetry.trace import INVALID_SPAN, Link, Span, SpanContext, SpanKind, Tracer
from opentelemetry.trace.status import Status, StatusCode
from opentelemetry.util.types import Attributes

from gateway.telemetry.recorder import Recorded, RequestTracer

_TRACER: ContextVar[Tracer | None] = ContextVar("gateway_tracer", default=None)
_EMPTY: Final = context.Context()
OFF: Final = contextlib.nullcontext(INVALID_SPAN)

ScopeOrOff = contextlib.AbstractContextManager[Span]


def bind(tracer: Tracer) -> Token[Tracer | None]:
    """Trace the current request (and the tasks it starts) with `tracer`."""
    return _TRACER.set(tracer)


def unbind(token: Token[Tracer | None]) -> None:
    _TRACER.reset(token)


def tracer() -> Tracer | None:
    """The tracer of the request this code runs for; None when it is not traced."""
    return _TRACER.get()


class Scope:
    """Ends `span` on exit, marked as failed (`error.type`) if the block raised; `current`
    makes it the parent of spans started inside."""

    __slots__ = ("_current", "_span", "_token")

    def __init__(self, span: Span, *, current: bool = False) -> None:
        self._span = span
        self._current = current
        self._token: Token[context.Context] | None = None

    def __enter__(self) -> Span:
        if self._current:
            self._token = context.attach(trace.set_span_in_context(self._span))
        return self._span

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        if error is not None:
            fail(self._span, error)
        if self._token is not None:
            context.detach(self._token)
        self._span.end()


def fail(span: Span, error: BaseException) -> None:
    span.set_attribute("error.type", type(error).__qualname__)
    span.set_status(Status(StatusCode.ERROR, str(error)))


def step(name: str, attributes: Attributes = None, *, kind: SpanKind = SpanKind.INTERNAL,
         current: bool = False) -> ScopeOrOff:
    """A child of the current span around one step of the request."""
    traced = _TRACER.get()
    if traced is None or not _steps(traced) or not trace.get_current_span().is_recording():
        return OFF
    return Scope(traced.start_span(name, kind=kind, attributes=attributes), current=current)


def _steps(traced: Tracer) -> bool:
    """Whether steps get spans: `detail = "steps"`, or a tracer not the gateway's (a test's)."""
    return not isinstance(traced, RequestTracer) or traced.steps


def current_span_context() -> SpanContext | None:
    """The current span's context, to link to later (the batcher does); None unless steps are
    traced and the request is sampled (a request kept only when it ends is not linked: the
    batch span cannot wait for that)."""
    traced = _TRACER.get()
    if traced is None or not _steps(traced):
        return None
    span_context = trace.get_current_span().get_span_context()
    return span_context if span_context.trace_flags.sampled else None


def when_kept(span: Span, fill: Callable[[Span], None]) -> None:
    """Runs `fill` (what only an exported span needs: the server span's name and its many
    attributes) when `span` is exported; never for a request that is dropped."""
    if isinstance(span, Recorded):
        span.fill = fill
    elif span.is_recording():
        fill(span)


def batch(name: str, links: Sequence[Link], attributes: Attributes) -> ScopeOrOff:
    """A span of its own trace for work done for many requests at once, linked to each
    (recorded) one; a child of any one of them would misplace the others'. None linked, none
    made."""
    traced = _TRACER.get()
    if traced is None or not links:
        return OFF
    return Scope(traced.start_span(name, context=_EMPTY, links=links, attributes=attributes))
