"""Limiter leases: units a process takes from a Redis bucket ahead of use and spends from
memory, so a hot key costs Redis one call per lease instead of one per request.

A key's lease is sized from its recent demand in this process (the units asked for over about
half a TTL, as a decaying count, so a lease is normally spent before it expires), capped at
`lease_block` of the rule's burst; a key whose lease would be under two units is cold and every
request for it is checked in Redis. A request the lease does not cover goes to Redis whole:
what the lease still holds is given back in the same call, the request is decided exactly, and
if it passes a new lease is taken along with it. One refill per key is under way at a time;
requests arriving meanwhile wait for it as far as its block would cover them, and the rest go
to Redis at once, in the same round trip, so waiting never serialises a burst. Unspent units go
back after `lease_ttl_ms` (the sweep runs every quarter TTL) and at shutdown.

The guarantee: a process holds at most about one block of a bucket. Over any interval the
units admitted exceed what the exact GCRA would admit by at most processes x block (units held
when the interval starts may be spent in it), and while demand exceeds the limit they fall
short of it by at most as much (units held, not yet spent, when it ends).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

from prometheus_client import Counter

from gateway.ratelimit.gcra import Bucket, BucketState, parse_reply, script_args
from gateway.ratelimit.keys import bucket_key
from gateway.ratelimit.rules import LimitRule
from gateway.ratelimit.script_runner import ScriptRunner
from gateway.types import RequestContext

log = logging.getLogger(__name__)

_COLD = 0.5  # a key whose recent demand decayed below this, holding nothing, is forgotten


def lease_block(share: float, burst: int) -> int:
    """The most units one process may hold of a bucket of `burst`; 0 (never leased) below 2,
    where a lease would save less than its bookkeeping and give-back call cost."""
    block = int(share * burst)
    return block if block >= 2 else 0


class Lease:
    """What this process holds of one bucket, and how fast it has been asking for it."""

    __slots__ = ("burst", "emission_us", "expires_at", "key", "level", "queued", "refill",
                 "remaining", "reset_at", "rule", "seen", "tokens", "wanted")

    def __init__(self, key: str, now: float) -> None:
        self.key = key  # the bucket's Redis key
        self.tokens = 0  # taken from Redis, not yet spent
        self.expires_at = 0.0  # monotonic; after it `tokens` are due back
        self.level = 0.0  # units asked for, decaying over half a TTL: the block it would need
        self.seen = now
        self.refill: asyncio.Future[Any] | None = None  # the call taking a new lease
        self.wanted = 0  # the units it asks for
        self.queued = 0  # units of the requests waiting for it
        self.remaining = 0  # what Redis had left after the last refill, for reply headers
        self.reset_at = 0.0
        self.emission_us = 0  # the bucket's T and burst when leased: what give-back uses
        self.burst = 0
        self.rule = ""  # its rule's name, for metrics

    def covers(self, units: int, now: float) -> bool:
        return self.tokens >= units and now < self.expires_at

    def can_wait(self, units: int) -> bool:
        """Whether the refill under way, if it gets its whole block, is likely to cover
        `units` after the requests already waiting for it."""
        return self.refill is not None and self.queued + units <= self.wanted

    def state(self, burst: int, now: float) -> BucketState:
        """The bucket as this process last saw it, for `RateLimit-*` on a request served here."""
        return BucketState(True, min(burst, self.remaining + self.tokens),
                           max(0, round((self.reset_at - now) * 1e6)), 0)


class LeaseBook:
    """The leases of one limiter, keyed like the buckets they come from."""

    def __init__(self, runner: ScriptRunner, max_share: float, ttl_s: float,
                 units: Counter) -> None:
        self._runner = runner
        self._max_share = max_share
        self._ttl_s = ttl_s
        self._horizon_s = ttl_s / 2  # demand is counted over this: the block lasts about this
        self._units = units  # gateway_ratelimit_lease_units_total{rule, event}
        # By what names the bucket: rule, its key, the key's value, model (its key is in the lease,
        # made once, not per request).
        self._leases: dict[tuple[str, str, str, str], Lease] = {}
        self._sweeper: asyncio.Task[None] | None = None

    def observe(self, rule: LimitRule, context: RequestContext, model: str, units: int,
                now: float) -> Lease:
        """The lease of the bucket `rule` counts this request in, with the request counted in
        its demand."""
        name = (rule.name, rule.key, rule.key_value(context), model)
        lease = self._leases.get(name)
        if lease is None:
            lease = self._leases[name] = Lease(bucket_key(rule, context, model), now)
            if self._sweeper is None:
                self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        lease.level = lease.level * math.exp((lease.seen - now) / self._horizon_s) + units
        lease.seen = now
        return lease

    def to_redis(self, lease: Lease, bucket: Bucket) -> Bucket:
        """`bucket` as sent for a request its lease does not cover: the lease's units go back
        (the request is decided on the whole truth) and a hot key with no refill under way
        asks for a new block on top."""
        back, lease.tokens = lease.tokens, 0
        want = 0
        if lease.refill is None:
            want = min(int(lease.level), lease_block(self._max_share, bucket.burst))
        return Bucket(bucket.key, bucket.units, bucket.emission_us, bucket.burst,
                      want if want >= 2 else 0, back)

    async def ask(self, sent: Sequence[Bucket], leases: Sequence[Lease],
                  rules: Sequence[str]) -> Any:
        """Redis's reply for `sent`. What it grants and takes back is booked when the reply
        arrives, before any other caller of that round trip resumes, and even if this caller
        was cancelled meanwhile (the units are taken either way)."""
        future = self._runner.submit(*script_args(sent))
        if not any(b.lease or b.give_back for b in sent):
            return await future
        refilling = False
        for bucket, lease in zip(sent, leases, strict=True):
            if bucket.lease:
                lease.refill, lease.wanted, lease.queued = future, bucket.lease, 0
                refilling = True
        future.add_done_callback(lambda done: self._booked(done, sent, leases, rules))
        return await (asyncio.shield(future) if refilling else future)

    def _booked(self, done: asyncio.Future[Any], sent: Sequence[Bucket],
                leases: Sequence[Lease], rules: Sequence[str]) -> None:
        now = time.monotonic()
        states = (None if done.cancelled() or done.exception() is not None
                  else parse_reply(done.result()))
        for i, (bucket, lease, rule) in enumerate(zip(sent, leases, rules, strict=True)):
            if bucket.lease:
                lease.refill = None
            if states is None:  # lost: Redis may or may not have taken them back
                continue
            if bucket.give_back:
                self._units.labels(rule, "returned").inc(bucket.give_back)
            state = states[i]
            if state.granted:
                lease.tokens += state.granted
                lease.expires_at = now + self._ttl_s
                lease.remaining, lease.reset_at = state.remaining, now + state.reset_us / 1e6
                lease.emission_us, lease.burst, lease.rule = (bucket.emission_us, bucket.burst,
                                                              rule)
                self._units.labels(rule, "taken").inc(state.granted)

    async def give_back(self, now: float, *, everything: bool = False) -> None:
        """Return what expired leases hold (every lease's, with `everything`) and forget cold
        keys. One script call per key, all in one round trip."""
        due: list[tuple[Bucket, Lease]] = []
        for name, lease in list(self._leases.items()):
            if lease.refill is not None:
                continue
            if lease.tokens and (everything or now >= lease.expires_at):
                due.append((Bucket(lease.key, 0, lease.emission_us, lease.burst, 0,
                                   lease.tokens), lease))
                lease.tokens = 0
            elif not lease.tokens and (
                    lease.level * math.exp((lease.seen - now) / self._horizon_s) < _COLD):
                del self._leases[name]
        if not due:
            return
        futures = [self._runner.submit(*script_args([bucket])) for bucket, _ in due]
        replies = await asyncio.gather(*futures, return_exceptions=True)
        for (bucket, lease), reply in zip(due, replies, strict=True):
            if not isinstance(reply, BaseException):
                self._units.labels(lease.rule, "returned").inc(bucket.give_back)

    async def close(self) -> None:
        """Stop the sweep and give every unspent unit back (bounded by the runner's timeout)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        refills = {lease.refill for lease in self._leases.values() if lease.refill is not None}
        if refills:  # what they take is given back too
            await asyncio.wait(refills)
        await self.give_back(time.monotonic(), everything=True)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self._ttl_s / 4)
            try:
                await self.give_back(time.monotonic())
            except Exception:  # the sweep must outlive any one failure; Redis errors are logged
                log.exception("returning expired rate-limit leases failed")

