"""Shedding before any work: a request takes a slot for the process and one for its model
before its body is read; when either is full it is refused at once with 503 + `Retry-After`,
so admitted requests keep their latency under overload instead of all of them queueing."""

from __future__ import annotations

from gateway.errors import Overloaded


class InflightLimits:
    def __init__(self, max_total: int, max_per_model: int) -> None:
        self._max_total = max_total
        self._max_per_model = max_per_model
        self._total = 0
        self._per_model: dict[str, int] = {}  # only models with requests in flight

    @property
    def in_flight(self) -> int:
        return self._total

    def acquire(self, model: str) -> None:
        """Take a slot for `model`, or raise `Overloaded`; pair every success with `release`."""
        if self._total >= self._max_total:
            raise Overloaded(f"the gateway is at its limit of {self._max_total} requests in "
                             "flight ([server] max_inflight); retry later", retry_after_s=1)
        held = self._per_model.get(model, 0)
        if held >= self._max_per_model:
            raise Overloaded(f"model {model!r} is at its limit of {self._max_per_model} "
                             "requests in flight ([server] max_inflight_per_model); retry later",
                             retry_after_s=1)
        self._total += 1
        self._per_model[model] = held + 1

    def release(self, model: str) -> None:
        self._total -= 1
        held = self._per_model[model] - 1
        if held:
            self._per_model[model] = held
        else:
            del self._per_model[model]
