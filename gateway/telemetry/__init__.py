"""Traces, the access log and the request metrics every front door records: `config`
(`[tracing]` and the OTEL_* environment), `setup` (the tracer provider), `spans` (the spans the
pipeline, adapters and batcher make), `propagation` (W3C traceparent in and out), `logs`,
`requests` (what a front door records when a request ends)."""
