"""Outlier ejection (Envoy's `outlier_detection`): the outcomes of real requests take an
endpoint out, after `consecutive_failures` in a row or a `failure_rate` over a window, for
`base_ejection_time_s` times the number of ejections in a row (at most `max_ejection_time_s`).
At most `max_ejection_percent` of the pool is ejected at once (one endpoint always may be),
and never the last endpoint up: ejection alone never empties a pool; only failed health checks
do."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from adapters.pool.endpoint import Endpoint
from adapters.pool_config import PoolConfig

log = logging.getLogger("adapters.pool")


class OutlierDetector:
    def __init__(self, backend: str, endpoints: Sequence[Endpoint], config: PoolConfig) -> None:
        self._backend = backend
        self._endpoints = endpoints
        self._config = config
        n = len(endpoints)
        percent = config.max_ejection_percent
        self._max_out = 0 if percent == 0 else min(n - 1, max(1, n * percent // 100))
        self._next_release = math.inf  # the soonest ejection end: calls look at one number

    def record(self, endpoint: Endpoint, failed: bool, now: float) -> None:
        c = self._config
        endpoint.consecutive_failures = endpoint.consecutive_failures + 1 if failed else 0
        if now - endpoint.window_started >= c.failure_rate_window_s:
            endpoint.window_started, endpoint.window_calls, endpoint.window_failures = now, 0, 0
        endpoint.window_calls += 1
        endpoint.window_failures += failed
        if endpoint.ejected:
            return
        if (failed and c.consecutive_failures
                and endpoint.consecutive_failures >= c.consecutive_failures):
            self._eject(endpoint, "consecutive_failures", now)
        elif (c.failure_rate and endpoint.window_calls >= c.failure_rate_min_requests
              and endpoint.window_failures >= c.failure_rate * endpoint.window_calls):
            self._eject(endpoint, "failure_rate", now)

    def release_expired(self, now: float) -> None:
        if now < self._next_release:
            return
        for endpoint in self._endpoints:
            if endpoint.ejected_until is not None and now >= endpoint.ejected_until:
                self.release(endpoint, now, "its ejection time is over")

    def release(self, endpoint: Endpoint, now: float, why: str) -> None:
        endpoint.ejected_until = None
        endpoint.returned_at = now
        self._next_release = min((e.ejected_until for e in self._endpoints
                                  if e.ejected_until is not None), default=math.inf)
        log.info("backend %s: endpoint %s is back (%s)", self._backend, endpoint.address, why)

    def _eject(self, endpoint: Endpoint, reason: str, now: float) -> None:
        if (sum(e.ejected for e in self._endpoints) >= self._max_out
                or not any(e.up for e in self._endpoints if e is not endpoint)):
            return  # the share is used up, or it would leave no endpoint up
        c = self._config
        if now - endpoint.returned_at > c.max_ejection_time_s:
            endpoint.ejection_multiplier = 0  # it behaved long enough: start over
        endpoint.ejection_multiplier += 1
        seconds = min(c.base_ejection_time_s * endpoint.ejection_multiplier,
                      c.max_ejection_time_s)
        endpoint.ejected_until = now + seconds
        self._next_release = min(self._next_release, endpoint.ejected_until)
        endpoint.probes_passed = 0
        endpoint.consecutive_failures = 0
        endpoint.window_calls = endpoint.window_failures = 0
        endpoint.ejections[reason] = endpoint.ejections.get(reason, 0) + 1
        log.warning("backend %s: endpoint %s ejected for %.3g s (%s)", self._backend,
                    endpoint.address, seconds, reason.replace("_", " "))
