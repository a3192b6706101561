"""The GCRA rate limiter: every rule that applies to a request, checked in one script call, or
served from this process's leases (`leases.py`) when it holds enough for every rule. The
script runs in Redis, or with no Redis in this process's memory (`memory.py`).

A request passes only if every applicable rule allows it, and then it is charged to all of
them; if one refuses, none is charged. Replies carry the IETF draft's `RateLimit-Policy` and
`RateLimit` fields (`headers.py`), with `Retry-After` on a refusal.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence

from opentelemetry.trace import SpanKind

from gateway.errors import RateLimited, Unavailable
from gateway.metrics import GatewayMetrics, children
from gateway.ratelimit.gcra import Bucket, BucketState, parse_reply, script_args
from gateway.ratelimit.headers import rate_limit_headers
from gateway.ratelimit.keys import bucket_key
from gateway.ratelimit.leases import Lease, LeaseBook
from gateway.ratelimit.memory import MemoryBuckets
from gateway.ratelimit.rules import LimitRule
from gateway.ratelimit.script_runner import ScriptError, ScriptRunner
from gateway.telemetry import spans
from gateway.types import InferRequest


class GcraLimiter:
    def __init__(self, runner: ScriptRunner | MemoryBuckets,
                 rules: Callable[[], Sequence[LimitRule]], metrics: GatewayMetrics,
                 leases: LeaseBook | None = None) -> None:
        self._runner = runner
        self._rules = rules  # called per check, so a policy reload applies to the next request
        self._decisions = children(metrics.ratelimit_decisions)
        self._leases = leases  # None: every check asks Redis

    async def check(self, request: InferRequest, cost: int) -> None:
        model = request.ref.model
        rules = [rule for rule in self._rules() if rule.applies_to(model)]
        if not rules:
            return
        units = [rule.units(cost) for rule in rules]
        for rule, n in zip(rules, units, strict=True):
            if n > rule.burst:  # would wait forever: refuse without asking Redis
                self._count(rule.name, "limited")
                raise RateLimited(f"this request costs {n} {rule.cost}, more than "
                                  f"limit {rule.name!r} allows at once ({rule.burst})")
        if self._leases is not None:
            now = time.monotonic()
            context = request.context
            leases = [self._leases.observe(rule, context, model, n, now)
                      for rule, n in zip(rules, units, strict=True)]
            if not self._served_here(request, rules, leases, units, now):
                await self._check_leased(self._leases, request, rules, leases, units)
            return
        buckets = [Bucket(bucket_key(rule, request.context, model), n,
                          rule.emission_interval_us(), rule.burst)
                   for rule, n in zip(rules, units, strict=True)]
        try:
            with spans.step("ratelimit", self._runner.span_attributes, kind=SpanKind.CLIENT):
                reply = await self._runner.call(*script_args(buckets))
        except ScriptError as exc:
            self._fail(rules, exc)
            return
        self._decide(request, rules, parse_reply(reply))

    async def close(self) -> None:
        if self._leases is not None:
            await self._leases.close()
        await self._runner.close()

    def _served_here(self, request: InferRequest, rules: list[LimitRule], leases: list[Lease],
                     units: list[int], now: float) -> bool:
        """The common case once a key is hot, so kept lean: every rule's lease covers the
        request, which is spent from them with no Redis call."""
        for lease, n in zip(leases, units, strict=True):
            if not lease.covers(n, now):
                return False
        closest, rule = leases[0], rules[0]
        for lease, n, other in zip(leases, units, rules, strict=True):
            lease.tokens -= n
            self._count(other.name, "allowed")
            if lease.remaining + lease.tokens < closest.remaining + closest.tokens:
                closest, rule = lease, other
        request.context.reply_headers.update(rate_limit_headers(
            rules, rule, min(rule.burst, closest.remaining + closest.tokens),
            closest.reset_at - now))
        return True

    async def _check_leased(self, book: LeaseBook, request: InferRequest,
                            rules: list[LimitRule], leases: list[Lease],
                            units: list[int]) -> None:
        now = time.monotonic()
        short = [(lease, n) for lease, n in zip(leases, units, strict=True)
                 if not lease.covers(n, now)]
        if short and all(lease.can_wait(n) for lease, n in short):
            # The refills under way should cover this request too: wait for them, once.
            for lease, n in short:
                lease.queued += n
            await asyncio.wait({lease.refill for lease, _ in short if lease.refill is not None})
            if self._served_here(request, rules, leases, units, time.monotonic()):
                return
        now = time.monotonic()
        # Leases that cover their rule reserve the units; Redis decides the other rules exactly.
        local = [lease.covers(n, now) for lease, n in zip(leases, units, strict=True)]
        reserved = [(lease, n) for lease, n, here in zip(leases, units, local, strict=True)
                    if here]
        _spend(reserved)
        asked = [i for i, here in enumerate(local) if not here]
        sent = [book.to_redis(leases[i], Bucket(leases[i].key, units[i],
                                                rules[i].emission_interval_us(),
                                                rules[i].burst)) for i in asked]
        try:
            with spans.step("ratelimit", self._runner.span_attributes, kind=SpanKind.CLIENT):
                reply = await book.ask(sent, [leases[i] for i in asked],
                                       [rules[i].name for i in asked])
        except ScriptError as exc:
            if any(rules[i].on_redis_error == "closed" for i in asked):
                _refund(reserved)
            self._fail([rules[i] for i in asked], exc)
            for i, here in enumerate(local):
                if here:
                    self._count(rules[i].name, "allowed")
            return
        except BaseException:  # cancelled: this request will not be served
            _refund(reserved)
            raise
        answers = parse_reply(reply)
        now = time.monotonic()
        if (not all(state.allowed for state in answers)
                and all(leases[i].covers(units[i], now) for i in asked)):
            # Refused, but a block taken in the same round trip holds enough: it is ours to
            # spend, and Redis charged nothing for this request.
            _spend((leases[i], units[i]) for i in asked)
            answers = [leases[i].state(rules[i].burst, now) for i in asked]
        states = [lease.state(rule.burst, now)
                  for lease, rule in zip(leases, rules, strict=True)]
        for i, state in zip(asked, answers, strict=True):
            states[i] = state
        try:
            self._decide(request, rules, states)
        except RateLimited:
            _refund(reserved)
            raise

    def _decide(self, request: InferRequest, rules: Sequence[LimitRule],
                states: Sequence[BucketState]) -> None:
        """Count the decision and set the headers; raise `RateLimited` if a rule refused."""
        refused = [(state, rule) for state, rule in zip(states, rules, strict=True)
                   if not state.allowed]
        if refused:
            for _, rule in refused:
                self._count(rule.name, "limited")
            state, rule = max(refused, key=lambda pair: pair[0].retry_us)
            headers = rate_limit_headers(rules, rule, state.remaining, state.retry_us / 1e6)
            request.context.reply_headers.update(headers)
            raise RateLimited(f"rate limit {rule.name!r} exceeded",
                              retry_after_s=state.retry_us / 1e6, headers=headers)
        for rule in rules:
            self._count(rule.name, "allowed")
        state, rule = (states[0], rules[0]) if len(rules) == 1 else min(
            zip(states, rules, strict=True), key=lambda pair: pair[0].remaining)
        request.context.reply_headers.update(rate_limit_headers(rules, rule, state.remaining,
                                                                state.reset_us / 1e6))

    def _fail(self, rules: list[LimitRule], error: ScriptError) -> None:
        """Redis could not decide: each rule's `on_redis_error` says whether that is a yes."""
        closed = [rule for rule in rules if rule.on_redis_error == "closed"]
        for rule in rules:
            self._count(rule.name, f"failed_{rule.on_redis_error}")
        if closed:  # the cause (hosts, ports) is logged by the runner, not told to clients
            raise Unavailable(f"rate limit {closed[0].name!r} cannot be checked now and fails "
                              "closed", retry_after_s=error.retry_after_s)

    def _count(self, rule: str, decision: str) -> None:
        self._decisions(rule, decision).inc()


def _spend(pairs: Iterable[tuple[Lease, int]]) -> None:
    for lease, units in pairs:
        lease.tokens -= units


def _refund(reserved: Iterable[tuple[Lease, int]]) -> None:
    for lease, units in reserved:
        lease.tokens += units
