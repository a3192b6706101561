"""The GCRA check as one Lua script: every bucket of a request in one atomic round trip.

GCRA (the generic cell rate algorithm) keeps one number per bucket, the theoretical arrival
time (TAT) of the next unit. A request of `units` is allowed when
`max(TAT, now) + units·T - τ <= now`, with T = period/rate and τ = T·burst; unlike a fixed
window it never lets 2·burst through around a window edge, and it refills smoothly.

The clock is Redis's (`TIME`), so replicas with skewed clocks still share one timeline.
Times are whole microseconds: exact in Lua's doubles. A bucket's key expires when its TAT
passes, the moment it would read as empty anyway, so idle callers leave no keys behind.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

SCRIPT = """
-- KEYS[i]: bucket i. ARGV[3i-2], ARGV[3i-1], ARGV[3i]: units, T and tau in microseconds.
-- Reply, per bucket: allowed (0/1), remaining, reset_us, retry_us.
-- All or nothing: state is written only when every bucket allows.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local tats, retries, allowed = {}, {}, true
for i = 1, #KEYS do
  local units, t, tau = tonumber(ARGV[3*i-2]), tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i])
  local tat = math.max(tonumber(redis.call('GET', KEYS[i])) or now, now)
  tats[i] = tat
  retries[i] = tat + units * t - tau - now
  if retries[i] > 0 then allowed = false end
end
local reply = {}
for i = 1, #KEYS do
  local units, t, tau = tonumber(ARGV[3*i-2]), tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i])
  local tat = tats[i]
  if allowed then
    tat = tat + units * t
    redis.call('SET', KEYS[i], string.format('%.0f', tat),
               'PX', math.ceil((tat - now) / 1000))
  end
  reply[4*i-3] = retries[i] > 0 and 0 or 1
  reply[4*i-2] = math.max(0, math.floor((tau - (tat - now)) / t))
  reply[4*i-1] = tat - now
  reply[4*i] = math.max(0, retries[i])
end
return reply
"""

SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Bucket:
    """One rule's bucket as the script needs it."""

    key: str
    units: int
    emission_us: int  # T
    burst: int

    def args(self) -> tuple[int, int, int]:
        return self.units, self.emission_us, self.emission_us * self.burst


@dataclass(frozen=True, slots=True)
class BucketState:
    """A bucket after the check; `retry_us` > 0 means this bucket refused."""

    allowed: bool
    remaining: int  # unit-cost requests that would be allowed right now
    reset_us: int  # until the bucket is full again
    retry_us: int  # until this request would be allowed


def script_args(buckets: Sequence[Bucket]) -> tuple[list[str], list[int]]:
    return [b.key for b in buckets], [a for b in buckets for a in b.args()]


def parse_reply(reply: Sequence[int]) -> list[BucketState]:
    return [BucketState(bool(reply[i]), int(reply[i + 1]), int(reply[i + 2]), int(reply[i + 3]))
            for i in range(0, len(reply), 4)]
