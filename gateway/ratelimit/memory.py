"""GCRA buckets in this process's memory, for limits with no Redis to share them
(`[limits] store`): the script of `gcra.py` evaluated in Python, step for step, and answered
as Redis answers it, so `GcraLimiter` decides, charges and writes headers exactly as it does
with Redis. Only the clock (this process's monotonic one) and the scope (one process) differ.

Each request is one synchronous evaluation on the event loop, so it is as atomic as the script
is in Redis. At most `max_keys` buckets are kept: a bucket whose TAT has passed is empty and is
dropped; past the bound the least recently charged goes first, which forgets its debt (that
caller may pass early): the bound trades exactness for a process that cannot be grown without
limit by callers minting keys (a header key is the client's to choose).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from opentelemetry.util.types import AttributeValue

SPAN_ATTRIBUTES: dict[str, AttributeValue] = {"gateway.ratelimit.store": "memory"}


def evaluate(tats: dict[str, int], now: int, keys: Sequence[str],
             args: Sequence[int]) -> list[int]:
    """The script of `gcra.py` on `tats` (key: TAT in microseconds; a key at or past `now` is
    absent), at time `now`; the same arguments and reply."""
    starts, retries, allowed = [], [], True
    for i, key in enumerate(keys):
        units, t, tau, _, back = args[5 * i:5 * i + 5]
        tat = max(tats.get(key, now), now)
        start = max(tat - back * t, now)
        retry = start + units * t - tau - now
        starts.append(start)
        retries.append(retry)
        if retry > 0:
            allowed = False
    reply: list[int] = []
    for i, key in enumerate(keys):
        units, t, tau, want, back = args[5 * i:5 * i + 5]
        tat, granted = starts[i], 0
        if allowed:
            tat += units * t
            granted = max(0, min(want, (now + tau - tat) // t))
            tat += granted * t
        if allowed or back > 0:
            tats.pop(key, None)  # re-inserted last: the dict's order is last charged first
            if tat > now:
                tats[key] = tat
        reply += (0 if retries[i] > 0 else 1, max(0, (tau - (tat - now)) // t), tat - now,
                  max(0, retries[i]), granted)
    return reply


class MemoryBuckets:
    """Answers `GcraLimiter` as `ScriptRunner` does, from a dict instead of Redis."""

    span_attributes = SPAN_ATTRIBUTES

    def __init__(self, max_keys: int) -> None:
        self._tats: dict[str, int] = {}
        self._max_keys = max_keys

    async def call(self, keys: Sequence[str], args: Sequence[int]) -> list[int]:
        now = time.monotonic_ns() // 1000
        reply = evaluate(self._tats, now, keys, args)
        self._trim(now)
        return reply

    def __len__(self) -> int:
        return len(self._tats)

    def _trim(self, now: int) -> None:
        """Drop empty buckets from the stale end, a few per call, and any past the bound."""
        tats = self._tats
        for _ in range(2):
            oldest = next(iter(tats), None)
            if oldest is None or tats[oldest] > now:
                break
            del tats[oldest]
        while len(tats) > self._max_keys:
            del tats[next(iter(tats))]

    async def close(self) -> None:
        self._tats.clear()
