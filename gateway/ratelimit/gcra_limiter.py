"""The Redis rate limiter: every rule that applies to a request, checked in one script call.

A request passes only if every applicable rule allows it, and then it is charged to all of
them; if one refuses, none is charged. Replies carry the IETF draft `RateLimit-*` headers of
the rule closest to refusing (or of the rule that refused, with `Retry-After`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from opentelemetry.trace import SpanKind

from gateway.errors import RateLimited, Unavailable
from gateway.metrics import GatewayMetrics
from gateway.ratelimit.gcra import Bucket, BucketState, parse_reply, script_args
from gateway.ratelimit.keys import bucket_key
from gateway.ratelimit.rules import LimitRule
from gateway.ratelimit.script_runner import ScriptError, ScriptRunner
from gateway.telemetry import spans
from gateway.types import InferRequest

#: The span of the Redis round trip (shared with the other checks of the same loop tick).
_SPAN_ATTRIBUTES = {"db.system": "redis", "db.operation.name": "EVALSHA"}


class GcraLimiter:
    def __init__(self, runner: ScriptRunner, rules: Callable[[], Sequence[LimitRule]],
                 metrics: GatewayMetrics) -> None:
        self._runner = runner
        self._rules = rules  # called per check, so a policy reload applies to the next request
        self._decisions = metrics.ratelimit_decisions

    async def check(self, request: InferRequest, cost: int) -> None:
        model = request.ref.model
        rules = [rule for rule in self._rules() if rule.applies_to(model)]
        if not rules:
            return
        principal = request.context.principal
        buckets = [Bucket(bucket_key(rule, principal, model), rule.units(cost),
                          rule.emission_interval_us(), rule.burst) for rule in rules]
        for rule, bucket in zip(rules, buckets, strict=True):
            if bucket.units > rule.burst:  # would wait forever: refuse without asking Redis
                self._decisions.labels(rule.name, "limited").inc()
                raise RateLimited(f"this request costs {bucket.units} {rule.cost}, more than "
                                  f"limit {rule.name!r} allows at once ({rule.burst})")
        try:
            with spans.step("ratelimit", _SPAN_ATTRIBUTES, kind=SpanKind.CLIENT):
                reply = await self._runner.call(*script_args(buckets))
        except ScriptError as exc:
            self._fail(rules, exc)
            return
        states = parse_reply(reply)
        refused = [(state, rule) for state, rule in zip(states, rules, strict=True)
                   if not state.allowed]
        if refused:
            for _, rule in refused:
                self._decisions.labels(rule.name, "limited").inc()
            state, rule = max(refused, key=lambda pair: pair[0].retry_us)
            headers = rate_limit_headers(rule, state)
            request.context.reply_headers.update(headers)
            raise RateLimited(f"rate limit {rule.name!r} exceeded",
                              retry_after_s=state.retry_us / 1e6, headers=headers)
        for rule in rules:
            self._decisions.labels(rule.name, "allowed").inc()
        state, rule = min(zip(states, rules, strict=True), key=lambda pair: pair[0].remaining)
        request.context.reply_headers.update(rate_limit_headers(rule, state))

    async def close(self) -> None:
        await self._runner.close()

    def _fail(self, rules: list[LimitRule], error: ScriptError) -> None:
        """Redis could not decide: each rule's `on_redis_error` says whether that is a yes."""
        closed = [rule for rule in rules if rule.on_redis_error == "closed"]
        for rule in rules:
            self._decisions.labels(rule.name, f"failed_{rule.on_redis_error}").inc()
        if closed:  # the cause (hosts, ports) is logged by the runner, not told to clients
            raise Unavailable(f"rate limit {closed[0].name!r} cannot be checked now and fails "
                              "closed", retry_after_s=error.retry_after_s)


def rate_limit_headers(rule: LimitRule, state: BucketState) -> dict[str, str]:
    """IETF httpapi-ratelimit-headers: the burst, what is left of it, seconds until it is
    whole again."""
    return {"RateLimit-Limit": str(rule.burst),
            "RateLimit-Remaining": str(state.remaining),
            "RateLimit-Reset": str(math.ceil(state.reset_us / 1e6))}
