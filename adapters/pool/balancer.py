"""`Balancer`: where each call to a backend goes. The least busy endpoint that is up; if it
turns out unavailable (not reached, or it refused the call before running it), once more on
another. When every endpoint is out (ejected or failing its health checks) the backend's
circuit is open: calls are answered 503 with `Retry-After` at once instead of each waiting on
a dead endpoint. (gateway/breaker.py counts failures of one dependency itself; here the
endpoints' own state already does, so the circuit is that state, not a second counter.)"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from adapters.pool.endpoint import Endpoint
from adapters.pool.failures import UNAVAILABLE, Unreachable, counts_against_endpoint, for_client
from adapters.pool.health import HealthChecker, Probe
from adapters.pool.metrics import unwatch_pool, watch_pool
from adapters.pool.outlier import OutlierDetector
from adapters.pool_config import PoolConfig
from gateway.errors import GatewayError, Unavailable
from gateway.metrics import GatewayMetrics

log = logging.getLogger("adapters.pool")

E = TypeVar("E", bound=Endpoint)
T = TypeVar("T")


class Balancer(Generic[E]):
    """Built inside the running loop (its health checks start at once); `close()` stops them.
    `backend` names it to clients, logs and metrics."""

    def __init__(self, backend: str, endpoints: Sequence[E], config: PoolConfig, *,
                 probe: Probe[E] | None = None, metrics: GatewayMetrics | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.backend = backend
        self.endpoints = list(endpoints)
        self._config = config
        self._clock = clock
        self._outliers = OutlierDetector(backend, self.endpoints, config)
        self._checks = (HealthChecker(backend, self.endpoints, config, probe, self._outliers,
                                      clock)
                        if probe is not None and config.health_check_interval_s > 0 else None)
        self.refused = 0  # calls answered at once because every endpoint was out
        self._turn = 0
        self._open = False
        self._metrics = metrics
        if metrics is not None:
            watch_pool(metrics, self)

    async def close(self) -> None:
        if self._metrics is not None:
            unwatch_pool(self._metrics, self)
        if self._checks is not None:
            await self._checks.close()

    def up(self) -> list[E]:
        """The endpoints calls may go to now."""
        self._outliers.release_expired(self._clock())
        return [e for e in self.endpoints if e.up]

    async def call(self, attempt: Callable[[E], Awaitable[T]]) -> T:
        """`attempt(endpoint)` on the least busy endpoint; on `Unavailable`, once on another."""
        endpoint = self._least_busy(self._up_or_refuse())
        for retry in (False, True):
            endpoint.outstanding += 1
            try:
                result = await attempt(endpoint)
            except GatewayError as exc:
                self._record(endpoint, exc)
                if not isinstance(exc, Unavailable):
                    raise
                others = [e for e in self.up() if e is not endpoint]
                if retry or not others:
                    raise for_client(exc) from None
            else:
                self._record(endpoint, None)
                return result
            finally:
                endpoint.outstanding -= 1
            endpoint = self._least_busy(others)
        raise AssertionError("unreachable")

    def _record(self, endpoint: E, error: GatewayError | None) -> None:
        if isinstance(error, Unreachable):
            log.warning("backend %s: endpoint %s not reached: %s", self.backend,
                        endpoint.address, error.message)
        failed = error is not None and counts_against_endpoint(error)
        self._outliers.record(endpoint, failed, self._clock())

    def _up_or_refuse(self) -> list[E]:
        up = self.up()
        if up:
            if self._open:
                self._open = False
                log.info("backend %s: an endpoint is up again: calls go through", self.backend)
            return up
        self.refused += 1
        retry_after_s = self.retry_after_s()
        if not self._open:
            self._open = True
            log.warning("backend %s: every endpoint is out: calls are refused at once "
                        "(retry in %.0f s)", self.backend, retry_after_s)
        raise Unavailable(f"{UNAVAILABLE}: every endpoint is out", retry_after_s=retry_after_s)

    def retry_after_s(self) -> float:
        """When an endpoint may be back, at the soonest: its ejection over, or the health
        checks it still needs to pass; at least 1 s."""
        now = self._clock()
        interval = self._config.health_check_interval_s
        soonest = math.inf
        for e in self.endpoints:
            wait = 0.0
            if e.ejected_until is not None:
                wait = e.ejected_until - now
            if not e.healthy:
                wait = max(wait, interval * (self._config.healthy_threshold - e.probes_passed))
            soonest = min(soonest, wait)
        return max(1.0, math.ceil(soonest)) if soonest != math.inf else 1.0

    def _least_busy(self, endpoints: list[E]) -> E:
        """Ties go round: sequential calls (none outstanding) spread over every endpoint."""
        n = len(endpoints)
        self._turn = turn = (self._turn + 1) % n
        best = endpoints[turn]
        for i in range(1, n):
            endpoint = endpoints[(turn + i) % n]
            if endpoint.outstanding < best.outstanding:
                best = endpoint
        return best

