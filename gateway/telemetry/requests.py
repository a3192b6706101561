"""What every front door records when a request ends: the request metrics, with the trace as
exemplar when the request was sampled, the request id on the server span, and the JSON access
line."""

from __future__ import annotations

from typing import Any

from opentelemetry import trace

from gateway.metrics import GatewayMetrics, children
from gateway.telemetry.logs import write_access_line
from gateway.types import RequestContext


class RequestRecorder:
    def __init__(self, metrics: GatewayMetrics, *, access_log: bool, traced: bool) -> None:
        self._metrics = metrics
        self._requests = children(metrics.requests)
        self._latency = children(metrics.latency)
        self._access_log = access_log
        self._traced = traced  # untraced, there is no span to look up

    @property
    def logs(self) -> bool:
        """Whether access lines are written: a front door gathers their fields only then."""
        return self._access_log

    def finished(self, frontend: str, model: str, status: str, error: str, seconds: float,
                 context: RequestContext | None, *, request_id: str, request: str,
                 log: bool = True, **fields: Any) -> None:
        """`status`: HTTP status or gRPC code name; `error`: the error's kind, "" on success;
        `request`: REST's method and path, gRPC's method; `log`: False for a request left out
        of the access log (a probe); `fields`: more for the access line (client, bytes)."""
        variant = context.variant if context is not None else ""
        exemplar = self._on_server_span(request_id) if self._traced else None
        metrics = self._metrics
        label = metrics.model_label(model)
        self._requests(frontend, label, variant, status).inc(exemplar=exemplar)
        self._latency(frontend, label, variant).observe(seconds, exemplar=exemplar)
        if error:
            metrics.errors.labels(frontend, status, error).inc()
        if self._access_log and log:
            write_access_line({
                "request_id": request_id, "request": request, "frontend": frontend,
                "principal": context.principal.subject if context is not None else "",
                "model": model, "version": context.version if context is not None else "",
                "variant": variant, "status": status, "error": error,
                "duration_ms": round(seconds * 1000, 3), **fields})

    def _on_server_span(self, request_id: str) -> dict[str, str] | None:
        """Puts the request id on the server span (current while a front door records);
        returns its trace as the metrics' exemplar when the request is sampled."""
        span = trace.get_current_span()
        span.set_attribute("gateway.request_id", request_id)  # ignored when not recording
        span_context = span.get_span_context()
        if not span_context.trace_flags.sampled:
            return None
        return {"trace_id": f"{span_context.trace_id:032x}"}
