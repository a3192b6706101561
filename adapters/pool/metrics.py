"""The pools' state as Prometheus metrics, read when scraped. Label values are bounded: a
backend and its endpoints come from config."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.metrics import GatewayMetrics

if TYPE_CHECKING:
    from adapters.pool.balancer import Balancer

REASONS = ("consecutive_failures", "failure_rate")
_COLLECTORS: WeakKeyDictionary[GatewayMetrics, PoolCollector] = WeakKeyDictionary()


def watch_pool(metrics: GatewayMetrics, pool: Balancer[Any]) -> None:
    """Show `pool` in `metrics` until `unwatch_pool`."""
    collector = _COLLECTORS.get(metrics)
    if collector is None:
        collector = _COLLECTORS[metrics] = PoolCollector()
        metrics.watch_collector(collector)
    collector.pools.append(pool)


def unwatch_pool(metrics: GatewayMetrics, pool: Balancer[Any]) -> None:
    collector = _COLLECTORS.get(metrics)
    if collector is not None and pool in collector.pools:
        collector.pools.remove(pool)


class PoolCollector(Collector):
    def __init__(self) -> None:
        self.pools: list[Balancer[Any]] = []

    def collect(self) -> Iterable[Metric]:
        where = ["backend", "endpoint"]
        up = GaugeMetricFamily(
            "gateway_backend_endpoint_up", "1 while calls may go to the endpoint, 0 while it "
            "is out (ejected, or failing its health checks).", labels=where)
        ejected = GaugeMetricFamily(
            "gateway_backend_endpoint_ejected", "1 while outlier ejection keeps the endpoint "
            "out.", labels=where)
        ejections = CounterMetricFamily(
            "gateway_backend_endpoint_ejections", "Times outlier ejection took the endpoint "
            "out, by reason: consecutive_failures, failure_rate.", labels=[*where, "reason"])
        failures = CounterMetricFamily(
            "gateway_backend_health_check_failures", "Active health checks the endpoint "
            "failed.", labels=where)
        refused = CounterMetricFamily(
            "gateway_backend_circuit_open_responses", "Calls answered 503 at once because "
            "every endpoint of the backend was out.", labels=["backend"])
        by_backend: dict[str, int] = {}  # a kind may keep several pools (TorchServe's APIs)
        for pool in self.pools:
            by_backend[pool.backend] = by_backend.get(pool.backend, 0) + pool.refused
            for e in pool.endpoints:
                labels = [pool.backend, e.address]
                up.add_metric(labels, float(e.up))
                ejected.add_metric(labels, float(e.ejected))
                failures.add_metric(labels, e.health_check_failures)
                for reason in REASONS:
                    ejections.add_metric([*labels, reason], e.ejections.get(reason, 0))
        for backend, count in by_backend.items():
            refused.add_metric([backend], count)
        return [up, ejected, ejections, failures, refused]
