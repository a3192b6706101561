"""What the front doors read while the gateway drains (the sequence is `gateway.shutdown`):
whether readiness is red, whether replies close their connection, and the calls in progress,
so that the ones still running when `shutdown_timeout_s` ends can be answered 503."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.errors import ShuttingDown

CUT_SHORT = ("the gateway is shutting down and this request did not finish within "
             "[server] shutdown_timeout_s; retry it on another replica")
REFUSED = "the gateway is shutting down; retry on another replica"

Call = asyncio.Task[Any]


class Drain:
    """The drain's state, set by `gateway.shutdown` in this order:

    - `draining`: readiness is red on every door (`/readyz`, v2 ready, gRPC health), while the
      listeners still accept;
    - `closing`: the listeners stopped accepting; every HTTP reply says `Connection: close`;
    - `expired`: `shutdown_timeout_s` passed; the calls still in progress are cancelled and
      answer 503 (`UNAVAILABLE`), and new ones are refused the same way.
    """

    def __init__(self) -> None:
        self.draining = False
        self.closing = False
        self.expired = False
        self._calls: set[Call] = set()
        self._cut: set[Call] = set()

    @property
    def in_flight(self) -> int:
        """Dialect calls in progress (REST requests and gRPC calls)."""
        return len(self._calls)

    def enter(self) -> Call:
        """Count the running task as a call in progress until `leave`; refused once the
        drain expired."""
        if self.expired:
            raise ShuttingDown(REFUSED, retry_after_s=1)
        task = asyncio.current_task()
        assert task is not None, "calls run in tasks"
        self._calls.add(task)
        return task

    def leave(self, task: Call) -> None:
        self._calls.discard(task)
        self._cut.discard(task)

    def expire(self) -> int:
        """Cancel every call in progress; each answers `ShuttingDown` if `was_cut` says so.
        Returns how many there were."""
        self.expired = True
        for task in self._calls:
            self._cut.add(task)
            task.cancel(CUT_SHORT)
        return len(self._calls)

    def was_cut(self) -> bool:
        """For an `except asyncio.CancelledError` around a call: whether `expire` cancelled it.
        If so the cancellation is withdrawn, so the call can still send its answer."""
        task = asyncio.current_task()
        if task is None or task not in self._cut:
            return False
        self._cut.discard(task)
        task.uncancel()
        return True
