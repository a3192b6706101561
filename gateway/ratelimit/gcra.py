"""The GCRA check as one Lua script: every bucket of a request in one atomic round trip, and
the lease a process takes or gives back along with it.

GCRA (the generic cell rate algorithm) keeps one number per bucket, the theoretical arrival
time (TAT) of the next unit. A request of `units` is allowed when
`max(TAT, now) + units·T - τ <= now`, with T = period/rate and τ = T·burst; unlike a fixed
window it never lets 2·burst through around a window edge, and it refills smoothly.

A lease (`gateway/ratelimit/leases.py`) is units taken ahead of use: when the request passes,
up to `lease` more are taken from the same bucket (as many as it holds, so a partial grant),
each moving TAT on by T as a request would. Unused units come back as `give_back`, which moves
TAT back by T each, never below now: a bucket cannot hold more than a full burst.

The clock is Redis's (`TIME`), so replicas with skewed clocks still share one timeline.
Times are whole microseconds: exact in Lua's doubles. A bucket's key expires when its TAT
passes, the moment it would read as empty anyway, so idle callers leave no keys behind.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

SCRIPT = """
-- KEYS[i]: bucket i. ARGV[5i-4 .. 5i]: units, T, tau (T and tau in microseconds), lease,
-- give_back. Reply, per bucket: allowed (0/1), remaining, reset_us, retry_us, granted.
-- All or nothing: units and leases are taken only when every bucket allows; give_back is
-- applied, first, either way.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local tats, retries, allowed = {}, {}, true
for i = 1, #KEYS do
  local units, t, tau = tonumber(ARGV[5*i-4]), tonumber(ARGV[5*i-3]), tonumber(ARGV[5*i-2])
  local tat = math.max(tonumber(redis.call('GET', KEYS[i])) or now, now)
  tats[i] = math.max(tat - tonumber(ARGV[5*i]) * t, now)
  retries[i] = tats[i] + units * t - tau - now
  if retries[i] > 0 then allowed = false end
end
local reply = {}
for i = 1, #KEYS do
  local units, t, tau = tonumber(ARGV[5*i-4]), tonumber(ARGV[5*i-3]), tonumber(ARGV[5*i-2])
  local want, back = tonumber(ARGV[5*i-1]), tonumber(ARGV[5*i])
  local tat, granted = tats[i], 0
  if allowed then
    tat = tat + units * t
    granted = math.max(0, math.min(want, math.floor((now + tau - tat) / t)))
    tat = tat + granted * t
  end
  if allowed or back > 0 then
    if tat > now then
      redis.call('SET', KEYS[i], string.format('%.0f', tat),
                 'PX', math.ceil((tat - now) / 1000))
    else
      redis.call('DEL', KEYS[i])
    end
  end
  reply[5*i-4] = retries[i] > 0 and 0 or 1
  reply[5*i-3] = math.max(0, math.floor((tau - (tat - now)) / t))
  reply[5*i-2] = tat - now
  reply[5*i-1] = math.max(0, retries[i])
  reply[5*i] = granted
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
    lease: int = 0  # units wanted on top of `units`, for this process to spend later
    give_back: int = 0  # leased units this process did not spend

    def args(self) -> tuple[int, int, int, int, int]:
        return (self.units, self.emission_us, self.emission_us * self.burst, self.lease,
                self.give_back)


@dataclass(frozen=True, slots=True)
class BucketState:
    """A bucket after the check; `retry_us` > 0 means this bucket refused."""

    allowed: bool
    remaining: int  # unit-cost requests that would be allowed right now
    reset_us: int  # until the bucket is full again
    retry_us: int  # until this request would be allowed
    granted: int = 0  # leased units taken on top of the request's


def script_args(buckets: Sequence[Bucket]) -> tuple[list[str], list[int]]:
    return [b.key for b in buckets], [a for b in buckets for a in b.args()]


def parse_reply(reply: Sequence[int]) -> list[BucketState]:
    return [BucketState(bool(reply[i]), int(reply[i + 1]), int(reply[i + 2]), int(reply[i + 3]),
                        int(reply[i + 4]))
            for i in range(0, len(reply), 5)]
