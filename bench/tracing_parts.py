#!/usr/bin/env python3
"""What tracing costs one REST request, part by part, in-process: the server span's life as
the middleware lives it (`gateway.rest.tracing`, `gateway.telemetry`), without the HTTP
around it, so each part is timed alone. bench/tracing.py runs it after its table (pinned to the
gateway's core); alone:

    taskset -c 0 .venv/bin/python bench/tracing_parts.py

Parts, in µs per request:
- `unrecorded`: a request neither sampled nor recorded (head decision only: `keep_errors =
  false`, `slow_ms = 0`): ids, a non-recording span, the context.
- `recorded, dropped`: a request recorded for the tail rules and dropped when it ends.
- `kept, on the loop`: a sampled request up to the processor's queue: recording, the server
  span's HTTP attributes (read only now), the `ReadableSpan`.
- `encoded, exporter thread`: the OTLP/gRPC exporter's protobuf encoding of one such span
  (`gateway.telemetry.otlp`), in a batch of 512 as the `BatchSpanProcessor` sends them.
- for scale, as the gateway did before: `SDK span` (the same server span made and ended by the
  SDK's tracer, processor without exporter) and `SDK encoding` (the SDK exporter's encoder).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from unittest import mock

from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from aiohttp.web_urldispatcher import UrlMappingMatchInfo
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, Tracer
from opentelemetry.trace.status import Status, StatusCode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gateway.rest.tracing import describe, request_attributes
from gateway.telemetry import otlp, propagation, setup, spans
from gateway.telemetry.config import TracingConfig


class Transport:
    """A TCP connection's, as far as the span's attributes read it (a mock's calls would
    cost more than the code timed)."""

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 50123) if name == "peername" else default


def demo_request() -> web.Request:
    """A request as the v2 route matched it, from a TCP peer."""
    route = web.Application().router.add_post("/v2/models/{model}/infer", mock.AsyncMock())
    request = make_mocked_request(
        "POST", "/v2/models/demo/infer", headers={
            "Host": "127.0.0.1:8080", "User-Agent": "wrk", "Content-Type": "application/json"},
        transport=Transport())
    request._match_info = UrlMappingMatchInfo({"model": "demo"}, route)  # its route: a mock
    return request


REQUEST = demo_request()


class Keep(SpanExporter):
    """Keeps what it is given: the spans to encode."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def tracer_for(exporter: Keep, **config: object) -> Tracer:
    """The gateway's tracer, its processor exporting to `exporter` synchronously."""
    setup._otlp_exporter = lambda _: exporter  # type: ignore[assignment]
    setup.BatchSpanProcessor = SimpleSpanProcessor  # type: ignore[assignment, misc]
    tracing = setup.build_tracing(TracingConfig(("otlp",), **config))  # type: ignore[arg-type]
    assert tracing is not None
    return tracing.tracer


def serve(tracer: Tracer) -> None:
    """The REST middleware's tracing around a request that answers 200."""
    span = tracer.start_span(REQUEST.method, context=propagation.extract(REQUEST.headers),
                             kind=SpanKind.SERVER)
    spans.when_kept(span, lambda kept: describe(kept, REQUEST))
    token = spans.bind(tracer)
    with spans.Scope(span, current=True):
        span.set_attribute("http.response.status_code", 200)
        span.set_attribute("gateway.request_id", "0123456789abcdef")
    spans.unbind(token)


def sdk_span(tracer: Tracer) -> None:
    span = tracer.start_span("POST /v2/models/{model}/infer", kind=SpanKind.SERVER,
                             attributes=request_attributes(REQUEST))
    span.set_attribute("http.response.status_code", 200)
    span.set_attribute("gateway.request_id", "0123456789abcdef")
    span.set_status(Status(StatusCode.UNSET))
    span.end()


def per_call(work: Callable[[], object], n: int) -> float:
    for _ in range(n // 10):
        work()
    best = float("inf")
    for _ in range(5):  # the best of five: what the code costs, not what a neighbour took
        started = time.perf_counter()
        for _ in range(n):
            work()
        best = min(best, (time.perf_counter() - started) / n)
    return best * 1e6


def main() -> int:
    n = 5000
    dropped, kept = Keep(), Keep()
    unrecorded = tracer_for(Keep(), sampler="always_off", keep_errors=False)
    recorded = tracer_for(dropped, sampler="always_off", slow_ms=60_000.0)
    sampled = tracer_for(kept, sampler="always_on")
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Keep()))
    sdk = provider.get_tracer("gateway")
    rows = [("unrecorded", per_call(lambda: serve(unrecorded), n)),
            ("recorded, dropped", per_call(lambda: serve(recorded), n)),
            ("kept, on the loop", per_call(lambda: serve(sampled), n))]
    assert not dropped.spans and kept.spans
    batch = kept.spans[:512]
    encoder = otlp.Encoder()
    rows.append(("encoded, exporter thread", per_call(
        lambda: encoder.request(batch).SerializeToString(), 20) / len(batch)))
    rows.append(("SDK span, for scale", per_call(lambda: sdk_span(sdk), n)))
    rows.append(("SDK encoding, for scale", per_call(
        lambda: encode_spans(batch).SerializeToString(), 20) / len(batch)))
    print("| part of a traced request | µs |\n|---|---|")
    for name, micros in rows:
        print(f"| {name} | {micros:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
