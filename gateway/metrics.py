"""Prometheus metrics the front ends record; one registry per gateway so tests stay apart."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "gateway_requests", "Requests answered, by front door, model and HTTP status.",
            ["frontend", "model", "status"], registry=self.registry)
        self.errors = Counter(
            "gateway_errors", "Requests that failed, by front door, status and error kind.",
            ["frontend", "status", "error"], registry=self.registry)
        self.latency = Histogram(
            "gateway_request_duration_seconds", "Time from request received to reply ready.",
            ["frontend", "model"], registry=self.registry,
            buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.ratelimit_decisions = Counter(
            "gateway_ratelimit_decisions", "Rate-limit outcomes per rule: allowed, limited (this "
            "rule refused), failed_open / failed_closed (Redis could not decide).",
            ["rule", "decision"], registry=self.registry)
