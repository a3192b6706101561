"""The gateway's Prometheus metrics on `GET /metrics`: requests by model, variant, front door
and status; request, backend, batch and queue-wait histograms; state read at scrape time
(queue depth, breakers, auth refusals); OpenMetrics with trace-id exemplars on request."""

from __future__ import annotations

import asyncio
import random
import re
import string
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry, Counter

from gateway.breaker import CircuitBreaker
from gateway.metrics import GatewayMetrics, children
from tests.auth_support import bearer, claims, hs_provider, sign
from tests.policy_support import AB_MODEL, add_ab_model, policies_section, write_policy
from tests.servers.otlp_receiver import OtlpReceiver

pytest_plugins = ["tests.servers.fixtures"]

V2_BODY = {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32",
                       "data": [1, 2, 3, 4, 5, 6, 7, 8]}]}
OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def sample(client: TestClient, name: str, **labels: str) -> float | None:
    registry = client.gateway.metrics.registry  # type: ignore[attr-defined]
    return registry.get_sample_value(name, labels)  # type: ignore[no-any-return]


async def test_requests_backends_and_batches_are_measured(
        make_client: Callable[..., Any]) -> None:
    client: TestClient = await make_client()
    for _ in range(3):
        assert (await client.post("/v2/models/demo/infer", json=V2_BODY)).status == 200
    labels = {"frontend": "v2", "model": "demo", "variant": ""}
    assert sample(client, "gateway_requests_total", status="200", **labels) == 3
    assert sample(client, "gateway_request_duration_seconds_count", **labels) == 3
    assert sample(client, "gateway_backend_duration_seconds_count", adapter="local",
                  model="demo") == 3
    version = {"model": "demo", "version": "1"}
    assert sample(client, "gateway_batch_size_count", **version) == 3
    assert sample(client, "gateway_batch_size_sum", **version) == 6  # two rows each
    assert sample(client, "gateway_batch_queue_wait_seconds_count", **version) == 3
    assert sample(client, "gateway_batch_queue_depth", **version) == 0
    text = await (await client.get("/metrics")).text()
    assert 'gateway_batch_queue_depth{model="demo",version="1"} 0.0' in text
    assert "# {" not in text  # no exemplars: tracing is off, and this is not OpenMetrics


async def test_requests_are_counted_by_variant(make_client: Callable[..., Any], tmp_path: Path,
                                               repo: Path) -> None:
    add_ab_model(repo)
    write_policy(tmp_path / "policies" / "p.toml", """
[[routes]]
name = "ab"
model = "ab"
target = { adapter = "local", version = 2, variant = "canary" }
""")
    client: TestClient = await make_client(AB_MODEL + policies_section(tmp_path / "policies"))
    reply = await client.post("/v2/models/ab/infer", json=V2_BODY)
    assert reply.status == 200 and reply.headers["x-gateway-variant"] == "canary"
    assert sample(client, "gateway_requests_total", frontend="v2", model="ab",
                  variant="canary", status="200") == 1


async def test_openmetrics_carries_the_trace_as_exemplar(
        traced: OtlpReceiver, make_client: Callable[..., Any]) -> None:
    client: TestClient = await make_client()
    trace_id = "c" * 32
    reply = await client.post("/v2/models/demo/infer", json=V2_BODY,
                              headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
    assert reply.status == 200
    scraped = await client.get("/metrics", headers={"Accept": OPENMETRICS})
    assert scraped.headers["Content-Type"].startswith("application/openmetrics-text")
    text = await scraped.text()
    assert re.search(r'^gateway_requests_total\{frontend="v2",model="demo",status="200",'
                     rf'variant=""\}} 1\.0 # \{{trace_id="{trace_id}"\}} 1\.0', text, re.M)
    assert re.search(rf'^gateway_request_duration_seconds_bucket\{{.*\}} 1\.0 '
                     rf'# \{{trace_id="{trace_id}"\}}', text, re.M)
    assert text.endswith("# EOF\n")
    plain = await (await client.get("/metrics")).text()
    assert plain.startswith("# HELP") and trace_id not in plain


async def test_auth_refusals_are_counted_by_reason(make_client: Callable[..., Any]) -> None:
    client: TestClient = await make_client(f"[auth]\nenabled = true\n{hs_provider()}")
    assert (await client.post("/v2/models/demo/infer", json=V2_BODY)).status == 401
    expired = sign(claims(time.time() - 7200, scope="predict"))
    for _ in range(2):
        reply = await client.post("/v2/models/demo/infer", json=V2_BODY,
                                  headers=bearer(expired))
        assert reply.status == 401
    assert sample(client, "gateway_auth_failures_total", reason="missing") == 1
    assert sample(client, "gateway_auth_failures_total", reason="expired") == 2
    assert sample(client, "gateway_auth_failures_total", reason="bad_signature") == 0


def test_breaker_states_are_read_when_scraped() -> None:
    now = [0.0]
    breaker = CircuitBreaker("redis", failures=1, reset_s=5, clock=lambda: now[0])
    metrics = GatewayMetrics()
    metrics.watch_breaker(breaker)

    def state() -> dict[str, float | None]:
        return {s: metrics.registry.get_sample_value(
            "gateway_breaker_state", {"breaker": "redis", "state": s})
            for s in ("closed", "open", "half_open")}

    assert state() == {"closed": 1, "open": 0, "half_open": 0}
    breaker.record_failure()
    assert state() == {"closed": 0, "open": 1, "half_open": 0}
    now[0] = 6
    assert breaker.allow()
    assert state() == {"closed": 0, "open": 0, "half_open": 1}


def test_queue_depths_are_read_when_scraped() -> None:
    metrics = GatewayMetrics()
    depths = {("demo", "1"): 3}
    metrics.watch_queues(lambda: depths)
    assert metrics.registry.get_sample_value(
        "gateway_batch_queue_depth", {"model": "demo", "version": "1"}) == 3
    depths[("demo", "1")] = 0
    assert metrics.registry.get_sample_value(
        "gateway_batch_queue_depth", {"model": "demo", "version": "1"}) == 0


def test_one_process_shows_its_own_process_and_python_metrics() -> None:
    """Without a group of workers (tests/test_metrics_workers.py) `/metrics` shows this
    gateway's registry, with the standard collectors and one worker."""
    metrics = GatewayMetrics()
    assert metrics.exposition is metrics.registry
    value = metrics.registry.get_sample_value
    assert value("gateway_workers") == 1
    assert value("process_cpu_seconds_total") is not None
    assert value("process_resident_memory_bytes") is not None
    assert value("python_gc_collections_total", {"generation": "0"}) is not None
    assert any(family.name == "python_info" for family in metrics.registry.collect())


async def test_made_up_model_names_add_no_series(make_client: Callable[..., Any]) -> None:
    """10,000 names no config or backend knows, through every REST door: the series count
    stays what it was after the first of each door; the names show up as `other`."""
    client: TestClient = await make_client()
    registry = client.gateway.metrics.registry  # type: ignore[attr-defined]

    def series() -> int:
        return sum(len(metric.samples) for metric in registry.collect())

    doors = [("POST", "/v2/models/{}/infer", V2_BODY), ("GET", "/v2/models/{}", None),
             ("POST", "/v1/models/{}:predict", {"instances": [[1, 2, 3, 4]]}),
             ("GET", "/v1/models/{}", None), ("POST", "/predictions/{}", V2_BODY),
             ("POST", "/models/{}/predict", V2_BODY)]
    rng = random.Random(9)

    async def call(index: int) -> int:
        method, path, body = doors[index % len(doors)]
        name = "".join(rng.choices(string.ascii_lowercase + string.digits, k=12))
        async with client.request(method, path.format(name), json=body) as reply:
            return reply.status

    assert {await call(i) for i in range(len(doors))} == {404}  # every door's series exist
    before = series()
    for start in range(0, 10_000, 200):
        statuses = await asyncio.gather(*(call(i) for i in range(start, start + 200)))
        assert set(statuses) == {404}
    assert series() == before
    assert sample(client, "gateway_requests_total", frontend="v2", model="other", variant="",
                  status="404") is not None


def test_children_are_the_metrics_own_series() -> None:
    """The cached lookup hands out the child `labels()` would, so updates land in the series
    the registry shows, however often it is asked."""
    registry = CollectorRegistry()
    counter = Counter("looked_up", "A counter.", ["frontend", "status"], registry=registry)
    child = children(counter)
    for _ in range(3):
        child("rest", "200").inc()
    child("grpc", "OK").inc()
    assert child("rest", "200") is counter.labels("rest", "200")
    assert registry.get_sample_value("looked_up_total", {"frontend": "rest", "status": "200"}) == 3
    assert registry.get_sample_value("looked_up_total", {"frontend": "grpc", "status": "OK"}) == 1
