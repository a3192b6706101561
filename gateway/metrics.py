"""Prometheus metrics the front ends, the batcher and the limiter record; one registry per
gateway so tests stay apart. State that already lives somewhere (queue depths, breaker states,
auth refusals by reason) is read when scraped rather than copied on every request. A worker of
a group (`PROMETHEUS_MULTIPROC_DIR` set) shows every worker's metrics (`gateway.worker_metrics`).

Label values are bounded: a model label is a configured or served model's name, or `other`
for anything a client made up, so no caller can grow the number of series."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.breaker import BreakerState
from gateway.worker_metrics import (
    PUBLISH_INTERVAL_S,
    GroupCollector,
    StatePublisher,
    multiprocess_directory,
    prepare_multiprocess,
    worker_exited,
)

if TYPE_CHECKING:
    from gateway.breaker import CircuitBreaker

__all__ = ["OTHER_MODEL", "BatchMetrics", "GatewayMetrics", "QueueDepths", "children",
           "prepare_multiprocess", "worker_exited"]

log = logging.getLogger(__name__)

_SECONDS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10)
_ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

#: (model, version) -> requests waiting in that version's batcher
QueueDepths = Callable[[], Mapping[tuple[str, str], int]]
#: the label value for a model name no configured or served model has
OTHER_MODEL = "other"
M = TypeVar("M", Counter, Histogram)


def children(metric: M) -> Callable[..., M]:
    """`metric.labels`, remembering each child it returns: `labels()` checks the values and
    takes a lock on every call (~2 µs, where the child's update costs ~0.5 µs), and a request
    makes several. Label values are bounded (see above), so the cache is too."""
    return functools.lru_cache(maxsize=4096)(metric.labels)


@dataclass(frozen=True, slots=True)
class BatchMetrics:
    """One model version's batch histograms, bound to its labels once."""

    size: Histogram
    queue_wait: Histogram

    def batch_started(self, rows: int, waits: Iterable[float]) -> None:
        self.size.observe(rows)
        for wait in waits:
            self.queue_wait.observe(wait)


class GatewayMetrics:
    """`registry`: this gateway's own metrics; `exposition`: what `/metrics` shows, the same
    registry, or in a group of workers the merged files of all of them. One per process in a
    group: two would write the same series of the same file."""

    def __init__(self) -> None:
        self.multiprocess_directory = multiprocess_directory()
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "gateway_requests", "Requests answered, by front door, model, A/B variant (\"\": "
            "none) and status (HTTP status, or gRPC code name).",
            ["frontend", "model", "variant", "status"], registry=self.registry)
        self.errors = Counter(
            "gateway_errors", "Requests that failed, by front door, status and error kind.",
            ["frontend", "status", "error"], registry=self.registry)
        self.latency = Histogram(
            "gateway_request_duration_seconds", "Time from request received to reply ready.",
            ["frontend", "model", "variant"], registry=self.registry, buckets=_SECONDS)
        self.ratelimit_decisions = Counter(
            "gateway_ratelimit_decisions", "Rate-limit outcomes per rule: allowed, limited (this "
            "rule refused), failed_open / failed_closed (Redis could not decide).",
            ["rule", "decision"], registry=self.registry)
        self.ratelimit_lease_units = Counter(
            "gateway_ratelimit_lease_units", "Units this process leased from Redis (taken) to "
            "spend without asking it, and unspent ones it gave back (returned).",
            ["rule", "event"], registry=self.registry)
        self.batch_size = Histogram(
            "gateway_batch_size", "Rows per batch the dynamic batcher ran.",
            ["model", "version"], registry=self.registry, buckets=_ROWS)
        self.batch_queue_wait = Histogram(
            "gateway_batch_queue_wait_seconds", "Time a request waited in the batcher's queue "
            "before its batch started.", ["model", "version"], registry=self.registry,
            buckets=_SECONDS)
        self.connections_refused = Counter(
            "gateway_connections_refused", "HTTP connections or requests refused below the "
            "application, by reason: connection_limit, header_timeout, request_line_too_long, "
            "headers_too_large, bad_request, tls_handshake.", ["reason"], registry=self.registry)
        Gauge("gateway_workers", "Live worker processes of this gateway (gateway serve "
              "--workers).", registry=self.registry, multiprocess_mode="livesum").set(1)
        self._state = _StateCollector()
        self.registry.register(self._state)
        self._known_model: Callable[[str], bool] = lambda model: False
        self._publisher: StatePublisher | None = None
        self._publishing: asyncio.Task[None] | None = None
        if self.multiprocess_directory is None:
            self.exposition = self.registry
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
            return
        # Another worker cannot call this one's read functions: it publishes what they read.
        published = CollectorRegistry()
        published.register(self._state)
        ProcessCollector(registry=published)
        GCCollector(registry=published)
        self._publisher = StatePublisher(published)
        self.exposition = CollectorRegistry()
        PlatformCollector(registry=self.exposition)
        self.exposition.register(GroupCollector(self.multiprocess_directory,
                                                self._publisher.publish))

    def start(self) -> None:
        """In a group of workers, publish this worker's state every `PUBLISH_INTERVAL_S`."""
        if self._publisher is not None and self._publishing is None:
            self._publishing = asyncio.get_running_loop().create_task(self._publish_forever())

    async def close(self) -> None:
        """In a group of workers, stop publishing and take this worker's gauges out of the
        group's (its counts stay in the totals)."""
        if self._publishing is not None:
            self._publishing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._publishing
            self._publishing = None
        if self.multiprocess_directory is not None:
            worker_exited(os.getpid(), self.multiprocess_directory)

    async def _publish_forever(self) -> None:
        assert self._publisher is not None
        while True:
            try:
                self._publisher.publish()
            except Exception:  # a failing read must not stop the others being published
                log.exception("publishing this worker's metrics failed")
            await asyncio.sleep(PUBLISH_INTERVAL_S)

    def label_models(self, known: Callable[[str], bool]) -> None:
        """Which model names may be label values (configured or served ones)."""
        self._known_model = known

    def model_label(self, model: str) -> str:
        return model if not model or self._known_model(model) else OTHER_MODEL

    def watch_inflight(self, read: Callable[[], int]) -> None:
        self._state.gauges.append(("gateway_inflight_requests",
                                   "Requests holding an in-flight slot (docs/security.md).", read))

    def watch_connections(self, read: Callable[[], int]) -> None:
        self._state.gauges.append(("gateway_http_connections", "Open HTTP connections.", read))

    def watch_readiness(self, read: Callable[[], int]) -> None:
        """`read`: 1 if the gateway was ready when last asked (probes, gRPC health's poll)."""
        self._state.gauges.append((
            "gateway_ready", "1 when the gateway is ready to serve (what /readyz answers), 0 "
            "while it is not: in-process models loading, shutting down (a remote backend down "
            "does not count: see gateway_backend_endpoint_up).", read))

    def batch_metrics(self, model: str, version: str) -> BatchMetrics:
        return BatchMetrics(self.batch_size.labels(model, version),
                            self.batch_queue_wait.labels(model, version))

    def watch_queues(self, depths: QueueDepths) -> None:
        self._state.queues.append(depths)

    def watch_breaker(self, breaker: CircuitBreaker) -> None:
        self._state.breakers.append(breaker)

    def watch_auth_failures(self, counts: Mapping[str, int], reasons: Iterable[str]) -> None:
        """`counts`: refusals by reason, as `JwtAuthenticator.reasons` keeps them; every one
        of `reasons` is exported from 0, so a rate sees the first refusal."""
        self._state.auth_failures.append((counts, tuple(reasons)))

    def watch_collector(self, collector: Collector) -> None:
        """Another part's scrape-time state (the backend pools'), shown the same way."""
        self._state.collectors.append(collector)


class _StateCollector(Collector):
    """Reads the watched state at scrape time."""

    def __init__(self) -> None:
        self.queues: list[QueueDepths] = []
        self.breakers: list[CircuitBreaker] = []
        self.auth_failures: list[tuple[Mapping[str, int], tuple[str, ...]]] = []
        self.gauges: list[tuple[str, str, Callable[[], int]]] = []
        self.collectors: list[Collector] = []

    def collect(self) -> Iterable[Metric]:
        depth = GaugeMetricFamily(
            "gateway_batch_queue_depth", "Requests waiting in a model version's batcher.",
            labels=["model", "version"])
        for depths in self.queues:
            for (model, version), waiting in depths().items():
                depth.add_metric([model, version], waiting)
        breakers = GaugeMetricFamily(
            "gateway_breaker_state", "Circuit breakers: 1 for the state each is in "
            "(closed, open, half_open), 0 for the others.", labels=["breaker", "state"])
        for breaker in self.breakers:
            for state in BreakerState:
                breakers.add_metric([breaker.name, state.value], float(breaker.state is state))
        failures = CounterMetricFamily(
            "gateway_auth_failures", "Requests refused by authentication, by reason.",
            labels=["reason"])
        for counts, reasons in self.auth_failures:
            for reason in reasons:
                failures.add_metric([reason], counts.get(reason, 0))
        gauges = [GaugeMetricFamily(name, help_text, value=read())
                  for name, help_text, read in self.gauges]
        return [depth, breakers, failures, *gauges,
                *(metric for c in self.collectors for metric in c.collect())]
