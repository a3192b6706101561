"""The pipeline's fallbacks with stand-in adapters: an unavailable target (a full queue, a
backend that is down) hands the request to the next one; any other error is the answer."""

from __future__ import annotations

import time
from typing import cast

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from gateway.auth import AnonymousAuthenticator
from gateway.authz import AllowAll
from gateway.backend import Adapter
from gateway.errors import BadRequest, GatewayError, QueueFull, Unavailable
from gateway.pipeline import Pipeline
from gateway.policy.metrics import RoutingMetrics
from gateway.policy.mirror import Mirror
from gateway.ratelimit import Unlimited
from gateway.routing import Target
from gateway.types import InferRequest, InferResponse, ModelRef, RequestContext


class StandIn:
    """Answers, or fails with the error it was given; counts its calls."""

    def __init__(self, name: str, error: GatewayError | None = None) -> None:
        self.name = name
        self.error = error
        self.calls = 0

    async def infer(self, request: InferRequest) -> InferResponse:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return InferResponse(request.ref.model, "1", {"y": np.zeros(1)})


class FixedRouter:
    def __init__(self, target: Target) -> None:
        self.target = target

    def route(self, ref: ModelRef, context: RequestContext) -> Target:
        return self.target

    def model_names(self) -> list[str]:
        return []


def chain(*adapters: StandIn) -> Target:
    first, *rest = (Target(cast(Adapter, a), ModelRef(a.name), a.name, route="r")
                    for a in adapters)
    return Target(first.adapter, first.ref, first.variant, route="r", fallbacks=tuple(rest))


async def infer(target: Target) -> tuple[InferResponse, CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = RoutingMetrics(registry)
    pipeline = Pipeline(AnonymousAuthenticator(), AllowAll(), Unlimited(), FixedRouter(target),
                        None, Mirror(metrics, 1), metrics)
    request = InferRequest(ModelRef("asked"), RequestContext(
        "test", {}, time.monotonic() + 10), inputs={"x": np.zeros((2, 4))})
    return await pipeline.infer(request), registry


@pytest.mark.parametrize("error", [QueueFull("full"), Unavailable("down")])
async def test_an_unavailable_target_hands_over_to_the_next(error: GatewayError) -> None:
    busy, down, spare = StandIn("busy", error), StandIn("down", Unavailable("x")), StandIn("spare")
    response, registry = await infer(chain(busy, down, spare))
    assert (response.model, response.variant) == ("spare", "spare")
    assert (busy.calls, down.calls, spare.calls) == (1, 1, 1)
    for adapter in ("busy", "down"):
        assert registry.get_sample_value("gateway_route_fallbacks_total",
                                         {"route": "r", "adapter": adapter}) == 1


async def test_a_client_error_is_the_answer() -> None:
    wrong, spare = StandIn("wrong", BadRequest("bad input")), StandIn("spare")
    with pytest.raises(BadRequest, match="bad input"):
        await infer(chain(wrong, spare))
    assert spare.calls == 0


async def test_when_all_are_unavailable_the_last_error_is_raised() -> None:
    with pytest.raises(QueueFull, match="last"):
        await infer(chain(StandIn("a", Unavailable("first")), StandIn("b", QueueFull("last"))))
