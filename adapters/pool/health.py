"""Active health checks: every `health_check_interval_s` (±10% at random, so replicas and
endpoints do not probe in step) each endpoint gets the kind's probe, at most
`health_check_timeout_s`. `unhealthy_threshold` failures in a row take it out,
`healthy_threshold` passes in a row bring it back, and also end an outlier ejection early
(Envoy's `successful_active_health_check_uneject_host`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from adapters.pool.endpoint import Endpoint
from adapters.pool.outlier import OutlierDetector
from adapters.pool_config import PoolConfig
from gateway.errors import GatewayError

log = logging.getLogger("adapters.pool")

E = TypeVar("E", bound=Endpoint)
#: `(endpoint, seconds)`: returns if the endpoint can serve, raises if not. A `GatewayError`
#: of the 4xx class passes: the endpoint answered.
Probe = Callable[[E, float], Awaitable[None]]
JITTER = 0.1

#: Its own generator: the process-wide one may be seeded or drawn on by others (Hypothesis).
_jitter = random.Random()


class ProbeFailed(Exception):
    """The endpoint answered, but not fit to serve (a health service's NOT_SERVING)."""


class HealthChecker(Generic[E]):
    def __init__(self, backend: str, endpoints: Sequence[E], config: PoolConfig,
                 probe: Probe[E], outliers: OutlierDetector,
                 clock: Callable[[], float]) -> None:
        self._backend = backend
        self._config = config
        self._probe = probe
        self._outliers = outliers
        self._clock = clock
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._check_forever(e)) for e in endpoints]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _check_forever(self, endpoint: E) -> None:
        interval = self._config.health_check_interval_s
        while True:
            await self.check(endpoint)
            await asyncio.sleep(interval * _jitter.uniform(1 - JITTER, 1 + JITTER))

    async def check(self, endpoint: E) -> None:
        seconds = self._config.health_check_timeout_s
        try:
            async with asyncio.timeout(seconds):
                await self._probe(endpoint, seconds)
        except GatewayError as exc:
            if exc.http_status >= 500:
                self._failed(endpoint, exc.message)
            else:
                self._passed(endpoint)
        except Exception as exc:  # whatever a probe raises is the endpoint failing it
            self._failed(endpoint, str(exc) or type(exc).__name__)
        else:
            self._passed(endpoint)

    def _passed(self, endpoint: E) -> None:
        endpoint.probes_passed += 1
        endpoint.probes_failed = 0
        if endpoint.probes_passed < self._config.healthy_threshold:
            return
        if not endpoint.healthy:
            endpoint.healthy = True
            log.info("backend %s: endpoint %s passed its health checks: in again",
                     self._backend, endpoint.address)
        if endpoint.ejected:
            self._outliers.release(endpoint, self._clock(), "it passed its health checks")

    def _failed(self, endpoint: E, why: str) -> None:
        endpoint.probes_failed += 1
        endpoint.probes_passed = 0
        endpoint.health_check_failures += 1
        log.debug("backend %s: endpoint %s failed a health check: %s", self._backend,
                  endpoint.address, why)
        if endpoint.healthy and endpoint.probes_failed >= self._config.unhealthy_threshold:
            endpoint.healthy = False
            log.warning("backend %s: endpoint %s out after %d failed health checks: %s",
                        self._backend, endpoint.address, endpoint.probes_failed, why)
