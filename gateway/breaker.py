"""A circuit breaker: after repeated failures, stop calling a dependency for a while, so a dead
one costs callers nothing instead of a timeout each; then let one probe call test it.

    closed ──N consecutive failures──► open ──reset_s passed──► half-open (one probe)
      ▲                                  ▲                            │
      └──────────probe succeeds──────────┼────────probe fails─────────┘
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from enum import Enum

log = logging.getLogger(__name__)


class BreakerState(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Callers ask `allow()` before a call and report its outcome with `record_success()` or
    `record_failure()`. In half-open only one call (the probe) is let through; a probe whose
    outcome never arrives (its caller was cancelled) is given up on after `reset_s`."""

    def __init__(self, name: str, failures: int, reset_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if failures < 1 or reset_s <= 0:
            raise ValueError("a breaker needs failures >= 1 and reset_s > 0")
        self.name = name
        self._threshold = failures
        self._reset_s = reset_s
        self._clock = clock
        self._failures = 0
        self._opened_at = 0.0
        self._probe_started: float | None = None
        self._state = BreakerState.CLOSED

    @property
    def state(self) -> BreakerState:
        return self._state

    def allow(self) -> bool:
        if self._state is BreakerState.CLOSED:
            return True
        now = self._clock()
        if self._state is BreakerState.OPEN:
            if now - self._opened_at < self._reset_s:
                return False
            self._state = BreakerState.HALF_OPEN
        elif self._probe_started is not None and now - self._probe_started < self._reset_s:
            return False
        self._probe_started = now
        return True

    def retry_after_s(self) -> float:
        """How long until the next call may be let through (0 when closed)."""
        if self._state is BreakerState.CLOSED:
            return 0.0
        since = self._probe_started if self._probe_started is not None else self._opened_at
        return max(0.0, self._reset_s - (self._clock() - since))

    def record_success(self) -> None:
        if self._state is not BreakerState.CLOSED:
            log.info("circuit %s closed: the dependency answered again", self.name)
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._probe_started = None

    def record_failure(self, error: BaseException | None = None) -> None:
        self._failures += 1
        if self._state is BreakerState.HALF_OPEN or self._failures >= self._threshold:
            if self._state is not BreakerState.OPEN:
                log.warning("circuit %s open for %.3g s after %d consecutive failures: %s",
                            self.name, self._reset_s, self._failures, error)
            self._state = BreakerState.OPEN
            self._opened_at = self._clock()
            self._probe_started = None
