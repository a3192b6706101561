"""What every front door records when a request ends: the request metrics, with the trace as
exemplar when the request was sampled, and the JSON access line."""

from __future__ import annotations

from typing import Any

from opentelemetry import trace

from gateway.metrics import GatewayMetrics
from gateway.telemetry.logs import write_access_line
from gateway.types import RequestContext


class RequestRecorder:
    def __init__(self, metrics: GatewayMetrics, *, access_log: bool, traced: bool) -> None:
        self._metrics = metrics
        self._access_log = access_log
        self._traced = traced  # untraced, there is no span to look up

    def finished(self, frontend: str, model: str, status: str, error: str, seconds: float,
                 context: RequestContext | None, **fields: Any) -> None:
        """`status`: HTTP status or gRPC code name; `error`: the error's kind, "" on success;
        `fields`: more for the access line (the HTTP method and path)."""
        variant = context.variant if context is not None else ""
        exemplar = self._exemplar()
        metrics = self._metrics
        label = metrics.model_label(model)
        metrics.requests.labels(frontend, label, variant, status).inc(exemplar=exemplar)
        metrics.latency.labels(frontend, label, variant).observe(seconds, exemplar=exemplar)
        if error:
            metrics.errors.labels(frontend, status, error).inc()
        if self._access_log:
            write_access_line({
                **fields, "frontend": frontend,
                "principal": context.principal.subject if context is not None else "",
                "model": model, "version": context.version if context is not None else "",
                "variant": variant, "status": status, "error": error,
                "duration_ms": round(seconds * 1000, 3)})

    def _exemplar(self) -> dict[str, str] | None:
        if not self._traced:
            return None
        span_context = trace.get_current_span().get_span_context()
        if not span_context.trace_flags.sampled:
            return None
        return {"trace_id": f"{span_context.trace_id:032x}"}
