"""The gateway's own tracer: spans recorded as plain objects while the request runs, and the
keep-or-drop decision taken when its local root (the server span) ends, so errors and slow
requests are kept whatever the ratio.

The SDK decides at span start (its samplers see only ids and a name), and a recorded SDK span
costs 25-45 µs on the event loop (locks, attribute validation, the processor chain) whether
it is exported or not. Here a span is a slotted object with a dict, a few µs; the request's
spans wait in a list until the root ends; only a kept trace's spans become SDK `ReadableSpan`s
handed to the span processors (the `BatchSpanProcessor` encodes and sends them in its thread).
A request that neither the head decision nor a tail rule could keep (ratio-dropped with
`keep_errors = false` and `slow_ms = 0`) records nothing: a non-recording span carries its
ids for propagation and logs.

The propagated `traceparent` flag is the head decision: a request kept only at its end went
to its backends with `sampled=0`, so backends that follow the flag did not record their part,
and the kept trace holds the gateway's spans only. Never the other way round: nothing the
gateway told "sampled" is dropped.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Final

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    TraceFlags,
    TraceState,
)
from opentelemetry.trace.status import Status, StatusCode
from opentelemetry.util._decorator import _agnosticcontextmanager  # what the API's tracers use
from opentelemetry.util.types import Attributes, AttributeValue

_LOW_64: Final = (1 << 64) - 1
_SAMPLED: Final = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED: Final = TraceFlags(TraceFlags.DEFAULT)
_UNSET: Final = Status(StatusCode.UNSET)
_NO_STATE: Final = TraceState()


class HeadSampler:
    """The decision a request's spans are propagated with, as the SDK's samplers of the
    same names take it (`OTEL_TRACES_SAMPLER`): the low 64 bits of the trace id under the
    ratio's bound; `parentbased_*` follow the caller's sampled flag when there is a caller."""

    def __init__(self, sampler: str, ratio: float) -> None:
        self._parent_based = sampler.startswith("parentbased_")
        root = sampler.removeprefix("parentbased_")
        self._bound = {"always_on": 1 << 64, "always_off": 0}.get(root, round(ratio * (1 << 64)))

    def sampled(self, trace_id: int, parent: SpanContext | None) -> bool:
        if parent is not None and self._parent_based:
            return bool(parent.trace_flags.sampled)
        return trace_id & _LOW_64 < self._bound


class Sink:
    """Where kept spans go: the processors, with the resource and scope every span names."""

    def __init__(self, processor: SpanProcessor, resource: Resource,
                 scope: InstrumentationScope) -> None:
        self.processor = processor
        self.resource = resource
        self.scope = scope

    def export(self, span: Recorded) -> None:
        if span.fill is not None:
            span.fill(span)
        context = span.context
        self.processor.on_end(ReadableSpan(
            span.name, SpanContext(context.trace_id, context.span_id, False, _SAMPLED,
                                   context.trace_state),
            span.parent, self.resource, span.attributes, span.events, span.links, span.kind,
            status=span.status, start_time=span.start_time, end_time=span.end_time,
            instrumentation_scope=self.scope))


class RequestTracer(trace.Tracer):
    """`start_span` with an explicit `context` starts a local root (a front door's server
    span continuing its caller, the batcher's batch span); without one, a child of the
    current span when that span is recorded, else a non-recording span carrying its ids."""

    def __init__(self, sink: Sink, head: HeadSampler, *, steps: bool, keep_errors: bool,
                 slow_ms: float) -> None:
        self.steps = steps  # per-step spans too, not only server and backend client spans
        self._sink = sink
        self._head = head
        self._keep_errors = keep_errors
        self._slow_ns = round(slow_ms * 1e6)
        self._tail = keep_errors or self._slow_ns > 0  # whether unsampled requests record

    def start_span(self, name: str, context: Context | None = None,
                   kind: SpanKind = SpanKind.INTERNAL, attributes: Attributes = None,
                   links: Sequence[Link] | None = None, start_time: int | None = None,
                   record_exception: bool = True, set_status_on_exception: bool = True) -> Span:
        if context is None:
            current = trace.get_current_span()
            if isinstance(current, Recorded):
                return Recorded(current.request, name, kind, attributes, links, current.context,
                                start_time=start_time)
            return NonRecordingSpan(current.get_span_context())
        caller = trace.get_current_span(context).get_span_context()
        parent = caller if caller.is_valid else None
        trace_id = parent.trace_id if parent is not None else random.getrandbits(128)
        sampled = (any(link.context.trace_flags.sampled for link in links) if links
                   else self._head.sampled(trace_id, parent))
        if not sampled and not self._tail:
            return NonRecordingSpan(SpanContext(
                trace_id, random.getrandbits(64), False, _NOT_SAMPLED,
                parent.trace_state if parent is not None else _NO_STATE))
        request = RequestTrace(self, sampled)
        return Recorded(request, name, kind, attributes, links, parent, trace_id=trace_id,
                        start_time=start_time)

    @_agnosticcontextmanager
    def start_as_current_span(self, name: str, context: Context | None = None,
                              kind: SpanKind = SpanKind.INTERNAL, attributes: Attributes = None,
                              links: Sequence[Link] | None = None,
                              start_time: int | None = None, record_exception: bool = True,
                              set_status_on_exception: bool = True,
                              end_on_exit: bool = True) -> Iterator[Span]:
        span = self.start_span(name, context, kind, attributes, links, start_time)
        with trace.use_span(span, end_on_exit=end_on_exit, record_exception=record_exception,
                            set_status_on_exception=set_status_on_exception):
            yield span

    def kept(self, request: RequestTrace, root: Recorded) -> bool:
        """The tail decision, when the local root ends. An error is the root's (a 5xx, a gRPC
    server code): a failed step the request survives, or a refused caller, is not one, so a
    flood of bad tokens is not exported span by span."""
        return (request.sampled
                or (self._keep_errors and root.status.status_code is StatusCode.ERROR)
                or (self._slow_ns > 0 and root.end_time - root.start_time >= self._slow_ns))

    def export(self, span: Recorded) -> None:
        self._sink.export(span)


class RequestTrace:
    """One request's recorded spans until its root ends; then kept (exported, and any span
    ending later too) or dropped."""

    __slots__ = ("kept", "root", "sampled", "spans", "tracer")

    def __init__(self, tracer: RequestTracer, sampled: bool) -> None:
        self.tracer = tracer
        self.sampled = sampled  # the head decision, which the traceparent flag carries
        self.kept: bool | None = None  # None until the root ends
        self.root: Recorded | None = None
        self.spans: list[Recorded] = []

    def ended(self, span: Recorded) -> None:
        if self.kept is None and span is not self.root:
            self.spans.append(span)
            return
        if self.kept is None:
            self.kept = self.tracer.kept(self, span)
            waiting, self.spans = self.spans, []
            if self.kept:
                for child in waiting:
                    self.tracer.export(child)
        if self.kept:
            self.tracer.export(span)


class Recorded(Span):
    """A span kept as plain data until its request's fate is known."""

    __slots__ = ("attributes", "context", "end_time", "events", "fill", "kind", "links", "name",
                 "parent", "request", "start_time", "status")

    def __init__(self, request: RequestTrace, name: str, kind: SpanKind, attributes: Attributes,
                 links: Sequence[Link] | None, parent: SpanContext | None, *,
                 trace_id: int | None = None, start_time: int | None = None) -> None:
        self.request = request
        self.name = name
        self.kind = kind
        self.attributes: dict[str, AttributeValue] = dict(attributes) if attributes else {}
        self.links: Sequence[Link] = links or ()
        self.events: list[Event] = []
        self.parent = parent
        self.status = _UNSET
        # filled in only when the span is exported: work an unkept request never pays
        self.fill: Callable[[Span], None] | None = None
        if trace_id is None:  # a child
            assert parent is not None
            trace_id, state = parent.trace_id, parent.trace_state
        else:  # the request's root
            request.root = self
            state = parent.trace_state if parent is not None else _NO_STATE
        self.context = SpanContext(trace_id, random.getrandbits(64), False,
                                   _SAMPLED if request.sampled else _NOT_SAMPLED, state)
        self.start_time = start_time or time.time_ns()
        self.end_time = 0

    def end(self, end_time: int | None = None) -> None:
        if self.end_time:
            return
        self.end_time = end_time or time.time_ns()
        self.request.ended(self)

    def get_span_context(self) -> SpanContext:
        return self.context

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        self.attributes.update(attributes)

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        self.attributes[key] = value

    def add_event(self, name: str, attributes: Attributes = None,
                  timestamp: int | None = None) -> None:
        self.events.append(Event(name, attributes, timestamp))

    def update_name(self, name: str) -> None:
        self.name = name

    def is_recording(self) -> bool:
        return not self.end_time

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        self.status = status if isinstance(status, Status) else Status(status, description)

    def record_exception(self, exception: BaseException, attributes: Attributes = None,
                         timestamp: int | None = None, escaped: bool = False) -> None:
        self.add_event("exception", {"exception.type": type(exception).__qualname__,
                                     "exception.message": str(exception),
                                     **(attributes or {})}, timestamp)
