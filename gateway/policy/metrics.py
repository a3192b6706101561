"""Prometheus metrics of routing policies: the active version and its changes, how long the
targets take, fallbacks taken, and what mirrored (shadow) requests cost and how far their
answers differ."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_SECONDS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10)
_DIFFS = (0, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1, 10)


class RoutingMetrics:
    def __init__(self, registry: CollectorRegistry,
                 model_label: Callable[[str], str] = lambda model: model) -> None:
        #: bounds the `model` label (`GatewayMetrics.model_label`)
        self.model_label = model_label
        self.policy_version = Gauge(
            "gateway_policy_version", "Number of the routing policy version this gateway runs.",
            registry=registry, multiprocess_mode="liveall")  # per worker: one may lag
        self.policy_changes = Counter(
            "gateway_policy_changes", "Policy changes by origin (files, admin, rollback, redis) "
            "and result: applied, unchanged, refused (invalid), failed (Redis unreachable).",
            ["origin", "result"], registry=registry)
        self.backend_latency = Histogram(
            "gateway_backend_duration_seconds", "Time an adapter took to answer (queue and "
            "batch included, for in-process models), by adapter and model.",
            ["adapter", "model"], registry=registry,
            buckets=(.0005, *_SECONDS))
        self.fallbacks = Counter(
            "gateway_route_fallbacks", "Requests passed to a route's next target because this "
            "adapter was unavailable or overloaded.", ["route", "adapter"], registry=registry)
        self.mirrored = Counter(
            "gateway_mirror_requests", "Mirrored requests by route and result: ok, error, "
            "timeout, skipped (too many in flight).", ["route", "result"], registry=registry)
        self.mirror_latency = Histogram(
            "gateway_mirror_duration_seconds", "Time the mirror target took to answer.",
            ["route"], registry=registry, buckets=_SECONDS)
        self.mirror_difference = Histogram(
            "gateway_mirror_max_abs_difference", "Largest absolute difference between the "
            "primary's and the mirror's numeric outputs, per mirrored request.",
            ["route"], registry=registry, buckets=_DIFFS)
        self.mirror_disagreements = Counter(
            "gateway_mirror_disagreements", "Mirrored answers that differ from the primary's: "
            "value (beyond the tolerance), shape, dtype or outputs (different names).",
            ["route", "reason"], registry=registry)
