"""The pipeline's fallbacks with stand-in adapters: an unavailable target (a full queue, a
backend that is down) hands the request to the next one; any other error is the answer. Each
target gets the request prepared for itself (body or tensors decoded with its own signature),
and the limiter is charged the decoded rows. (tests/test_fallback_chains.py: the same with real
backends.)"""

from __future__ import annotations

import time
from typing import cast

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from gateway.auth import AnonymousAuthenticator
from gateway.authz import AllowAll
from gateway.backend import Adapter
from gateway.dtypes import BY_V2
from gateway.errors import BadRequest, GatewayError, QueueFull, Unavailable
from gateway.pipeline import Pipeline
from gateway.policy.metrics import RoutingMetrics
from gateway.policy.mirror import Mirror
from gateway.ratelimit import Unlimited
from gateway.routing import Target
from gateway.types import (
    InferRequest,
    InferResponse,
    ModelMetadata,
    ModelRef,
    RequestContext,
    TensorSpec,
)


class StandIn:
    """Answers, or fails with the error it was given; counts its calls and keeps what each
    call was given. Its signature names it (`x_<name>`), so a decode shows whose it used."""

    passes_body = False

    def __init__(self, name: str, error: GatewayError | None = None,
                 metadata_error: GatewayError | None = None) -> None:
        self.name = name
        self.error = error
        self.metadata_error = metadata_error
        self.calls = 0
        self.received: list[tuple[dict[str, np.ndarray], bytes | None]] = []

    async def infer(self, request: InferRequest) -> InferResponse:
        self.calls += 1
        self.received.append((dict(request.inputs), request.body))
        if self.error is not None:
            raise self.error
        return InferResponse(request.ref.model, "1", {"y": np.zeros(1)})

    async def model_metadata(self, ref: ModelRef) -> ModelMetadata:
        if self.metadata_error is not None:
            raise self.metadata_error
        spec = TensorSpec(f"x_{self.name}", BY_V2["FP32"], (-1, 4))
        return ModelMetadata(ref.model, "1", ("1",), "test", (spec,), ())


class BodyPassing(StandIn):
    """A backend that takes the client's bytes as they are (as TorchServe's handlers do)."""

    passes_body = True


class RecordingLimiter:
    """Admits everything and keeps each charge; `error` makes it fail as a limiter that
    cannot reach Redis and fails closed does."""

    def __init__(self, error: GatewayError | None = None) -> None:
        self.costs: list[int] = []
        self.error = error

    async def check(self, request: InferRequest, cost: int) -> None:
        if self.error is not None:
            raise self.error
        self.costs.append(cost)

    async def close(self) -> None:
        return None


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


async def infer(target: Target, request: InferRequest | None = None,
                limiter: RecordingLimiter | Unlimited | None = None,
                ) -> tuple[InferResponse, CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = RoutingMetrics(registry)
    pipeline = Pipeline(AnonymousAuthenticator(), AllowAll(), limiter or Unlimited(),
                        FixedRouter(target), None, Mirror(metrics, 1), metrics)
    if request is None:
        request = InferRequest(ModelRef("asked"), RequestContext(
            "test", {}, time.monotonic() + 10), inputs={"x": np.zeros((2, 4))})
    return await pipeline.infer(request), registry


def body_request(rows: int) -> InferRequest:
    """What the TorchServe door makes: the client's bytes, and a decoder for the others
    (here `rows` rows of zeros under the signature's input name)."""
    return InferRequest(
        ModelRef("asked"), RequestContext("test", {}, time.monotonic() + 10),
        body=b"client bytes", content_type="application/json",
        decoder=lambda signature: {signature.inputs[0].name: np.zeros((rows, 4), np.float32)})


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


async def test_a_body_passing_target_falling_back_to_a_tensor_target() -> None:
    """TorchServe first, ONNX as the fallback: the fallback decodes the body with its own
    signature (it used to get no inputs), and the limiter is charged the decoded rows."""
    down, local = BodyPassing("ts", Unavailable("down")), StandIn("local")
    limiter = RecordingLimiter()
    response, _ = await infer(chain(down, local), body_request(rows=3), limiter)
    assert response.variant == "local"
    assert down.received == [({}, b"client bytes")]
    (inputs, _), = local.received
    assert list(inputs) == ["x_local"] and inputs["x_local"].shape == (3, 4)
    assert sum(limiter.costs) == 3  # 1 for the body's call, 2 more once it decoded to 3 rows


async def test_a_tensor_target_falling_back_to_a_body_passing_target() -> None:
    """The other way round: the tensor target is down before it gives a signature; the
    body-passing fallback gets the client's bytes, and one call is charged."""
    down, ts = StandIn("tf", metadata_error=Unavailable("down")), BodyPassing("ts")
    limiter = RecordingLimiter()
    response, _ = await infer(chain(down, ts), body_request(rows=3), limiter)
    assert response.variant == "ts"
    assert down.calls == 0
    assert ts.received == [({}, b"client bytes")]
    assert limiter.costs == [1]


async def test_each_tensor_target_decodes_with_its_own_signature() -> None:
    first, second = StandIn("a", Unavailable("down")), StandIn("b")
    limiter = RecordingLimiter()
    await infer(chain(first, second), body_request(rows=2), limiter)
    assert [list(inputs) for inputs, _ in first.received] == [["x_a"]]
    assert [list(inputs) for inputs, _ in second.received] == [["x_b"]]
    assert limiter.costs == [2]  # the same rows: charged once


async def test_a_limiter_that_cannot_decide_is_not_a_fallback() -> None:
    first, spare = StandIn("a"), StandIn("spare")
    limiter = RecordingLimiter(error=Unavailable("rate limit cannot be checked"))
    with pytest.raises(Unavailable, match="rate limit"):
        await infer(chain(first, spare), limiter=limiter)
    assert (first.calls, spare.calls) == (0, 0)
