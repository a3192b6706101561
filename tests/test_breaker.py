"""The circuit breaker's state machine, on a clock the test moves."""

from __future__ import annotations

import pytest

from gateway.breaker import BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def breaker(clock: Clock) -> CircuitBreaker:
    return CircuitBreaker("dep", failures=3, reset_s=5.0, clock=clock)


def open_it(breaker: CircuitBreaker) -> None:
    for _ in range(3):
        assert breaker.allow()
        breaker.record_failure(OSError("refused"))


def test_opens_after_consecutive_failures_only(breaker: CircuitBreaker) -> None:
    for _ in range(2):
        breaker.record_failure()
    breaker.record_success()  # resets the count: the next two failures are not enough
    for _ in range(2):
        breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED and breaker.allow()
    assert breaker.retry_after_s() == 0
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN and not breaker.allow()


def test_open_refuses_until_reset_then_lets_one_probe(breaker: CircuitBreaker,
                                                      clock: Clock) -> None:
    open_it(breaker)
    clock.now += 4.0
    assert not breaker.allow()
    assert breaker.retry_after_s() == pytest.approx(1.0)
    clock.now += 1.0
    assert breaker.allow()  # the probe
    assert breaker.state is BreakerState.HALF_OPEN
    assert not breaker.allow()  # only one probe at a time
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert all(breaker.allow() for _ in range(10))


def test_failed_probe_reopens_for_a_full_period(breaker: CircuitBreaker, clock: Clock) -> None:
    open_it(breaker)
    clock.now += 5.0
    assert breaker.allow()
    clock.now += 1.0
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    clock.now += 4.9
    assert not breaker.allow()
    clock.now += 0.1
    assert breaker.allow()


def test_abandoned_probe_is_replaced_after_reset(breaker: CircuitBreaker, clock: Clock) -> None:
    """A probe whose caller was cancelled never reports; the breaker must not wait forever."""
    open_it(breaker)
    clock.now += 5.0
    assert breaker.allow()
    clock.now += 4.0
    assert not breaker.allow()
    assert breaker.retry_after_s() == pytest.approx(1.0)
    clock.now += 1.0
    assert breaker.allow()


def test_rejects_nonsense_settings() -> None:
    with pytest.raises(ValueError, match="failures >= 1"):
        CircuitBreaker("dep", failures=0, reset_s=1)
    with pytest.raises(ValueError, match="reset_s > 0"):
        CircuitBreaker("dep", failures=1, reset_s=0)
