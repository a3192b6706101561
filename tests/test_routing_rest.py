"""Routing policies through the REST front door: today's behaviour by default, A/B splits with
the variant echoed, header routes, fallbacks on a down or overloaded backend (never on a
client's mistake), and mirrors that are measured without touching the primary's reply."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from aiohttp.test_utils import TestClient

from tests.policy_support import (
    AB_MODEL,
    ROW,
    add_ab_model,
    policies_section,
    predict,
    split_policy,
    write_policy,
)
from tests.servers.tfserving_standin import StartStandIn, dead_address, tfserving_config
from tests.waiting import wait_until

pytest_plugins = ["tests.servers.fixtures"]
ROOT = Path(__file__).resolve().parent.parent
MakeClient = Callable[..., object]


async def gateway(make_client: MakeClient, tmp_path: Path, repo: Path, policy: str,
                  extra: str = "", policies: str = "") -> TestClient:
    add_ab_model(repo)
    write_policy(tmp_path / "policies" / "p.toml", policy)
    config = AB_MODEL + extra + policies_section(tmp_path / "policies", extra=policies)
    return await make_client(config)  # type: ignore[operator, no-any-return]


def metric(client: TestClient, name: str, **labels: str) -> float:
    registry = client.gateway.metrics.registry  # type: ignore[attr-defined]
    return registry.get_sample_value(name, labels) or 0.0  # type: ignore[no-any-return]


def scaled_answer(scale: float) -> list[float]:
    logits = np.asarray(ROW, np.float64) * scale
    exp = np.exp(logits - logits.max())
    return list((exp / exp.sum())[:3])


async def test_the_shipped_default_policy_keeps_todays_behaviour(
        make_client: MakeClient, tmp_path: Path) -> None:
    shutil.copytree(ROOT / "policies", tmp_path / "policies")
    client: TestClient = await make_client(policies_section(tmp_path / "policies"))  # type: ignore[operator]
    for path in ("/v1/models/demo:predict", "/v1/models/demo/versions/1:predict",
                 "/v1/models/demo/labels/stable:predict"):
        reply = await client.post(path, json={"instances": [ROW]})
        assert reply.status == 200, await reply.text()
        assert "x-gateway-variant" not in reply.headers
    reply = await client.post("/v1/models/demo/versions/9:predict", json={"instances": [ROW]})
    assert reply.status == 404  # the version asked for passes through the route
    assert (await predict(client, "multi")).status == 400  # unrouted: the route table
    assert (await client.get("/v1/models/slow")).status == 200


async def test_split_echoes_the_variant_and_serves_its_version(
        make_client: MakeClient, tmp_path: Path, repo: Path) -> None:
    client = await gateway(make_client, tmp_path, repo, split_policy())
    seen = {}
    for n in range(40):
        user = {"x-user-id": f"user-{n}"}
        served = await predict(client, headers=user)
        assert served.status == 200
        assert served.version == {"a": "1", "b": "2"}[served.variant or ""]
        outputs = served.body["outputs"][0]["data"]  # type: ignore[index]
        np.testing.assert_allclose(outputs, scaled_answer(1.0 if served.variant == "a" else 0.5),
                                   rtol=1e-5)
        again = await predict(client, headers=user)
        assert again.variant == served.variant  # sticky
        seen[served.variant] = seen.get(served.variant, 0) + 1
    assert set(seen) == {"a", "b"}
    for n in range(10):
        served = await predict(client, headers={"x-user-id": f"user-{n}", "x-experiment": "b"})
        assert (served.variant, served.version) == ("b", "2")


async def test_header_routes_and_first_match(make_client: MakeClient, tmp_path: Path,
                                             repo: Path) -> None:
    client = await gateway(make_client, tmp_path, repo, """
[[routes]]
name = "internal"
model = "ab"
target = { adapter = "local", label = "canary", variant = "internal" }
[routes.headers]
x-user = { regex = "internal-[0-9]+" }

[[routes]]
name = "everyone"
model = "ab"
target = { adapter = "local", version = 1, variant = "stable" }
""")
    internal = await predict(client, headers={"X-User": "internal-42"})
    assert (internal.variant, internal.version) == ("internal", "2")
    for headers in ({"x-user": "internal-42x"}, {}):
        other = await predict(client, headers=headers)
        assert (other.variant, other.version) == ("stable", "1")


FALLBACK = """
[[routes]]
name = "demo-remote"
model = "demo"
target = {{ adapter = "{primary}" }}
[[routes.fallbacks]]
adapter = "local"
variant = "local"
"""


async def test_fallback_when_the_backend_is_down(make_client: MakeClient, tmp_path: Path,
                                                 repo: Path) -> None:
    client = await gateway(make_client, tmp_path, repo, FALLBACK.format(primary="dead"),
                           tfserving_config(dead_address(), models=(), adapter="dead"))
    served = await predict(client, "demo")
    assert (served.status, served.variant) == (200, "local")
    # TF Serving JSON needs a signature to decode: it too comes from the fallback
    reply = await client.post("/v1/models/demo:predict", json={"instances": [ROW]})
    assert reply.status == 200 and reply.headers["x-gateway-variant"] == "local"
    assert (await client.get("/v2/models/demo")).status == 200
    assert metric(client, "gateway_route_fallbacks_total", route="demo-remote",
                  adapter="dead") == 3  # v2 infer; TF Serving's signature; v2 metadata


async def test_fallback_when_the_backend_is_overloaded_but_not_on_a_bad_request(
        make_client: MakeClient, tmp_path: Path, repo: Path,
        start_standin: StartStandIn) -> None:
    standin = await start_standin()
    client = await gateway(make_client, tmp_path, repo, """
[[routes]]
name = "demo-remote"
model = "tfdemo"
target = { adapter = "tf" }
[[routes.fallbacks]]
adapter = "local"
model = "demo"
variant = "local"
""", tfserving_config(standin.address))
    served = await predict(client, "tfdemo")
    assert (served.status, served.variant, served.body["model_name"]) == (200, None, "tfdemo")
    standin.fail_next("Predict", grpc.StatusCode.RESOURCE_EXHAUSTED, "too busy")
    served = await predict(client, "tfdemo")
    assert (served.status, served.variant, served.body["model_name"]) == (200, "local", "demo")
    standin.fail_next("Predict", grpc.StatusCode.INVALID_ARGUMENT, "bad input")
    served = await predict(client, "tfdemo")
    assert served.status == 400 and "bad input" in str(served.body["error"])
    assert metric(client, "gateway_route_fallbacks_total", route="demo-remote",
                  adapter="tf") == 1


async def test_when_every_target_is_down_the_last_error_is_the_answer(
        make_client: MakeClient, tmp_path: Path, repo: Path) -> None:
    client = await gateway(make_client, tmp_path, repo, """
[[routes]]
name = "nowhere"
model = "demo"
target = { adapter = "dead" }
[[routes.fallbacks]]
adapter = "dead"
variant = "still-dead"
""", tfserving_config(dead_address(), models=(), adapter="dead"))
    served = await predict(client, "demo")
    assert served.status == 503 and served.body["error"] == "the model's backend is unavailable"
    assert served.variant is None


MIRROR = """
[[routes]]
name = "shadowed"
model = "ab"
target = {{ adapter = "local", version = 1 }}
[routes.mirror]
{mirror}
percent = 100
tolerance = 0.001
timeout_ms = {timeout_ms}
"""


@pytest.mark.parametrize(("mirror", "disagreement"), [
    ('adapter = "local"\nversion = 1', None),
    ('adapter = "local"\nversion = 2', "value"),
    ('adapter = "local"\nmodel = "demo"', "outputs"),  # the demo names its output otherwise
])
async def test_mirror_measures_latency_and_disagreement(
        make_client: MakeClient, tmp_path: Path, repo: Path, mirror: str,
        disagreement: str | None) -> None:
    client = await gateway(make_client, tmp_path, repo, MIRROR.format(mirror=mirror,
                                                                        timeout_ms=5000))
    for _ in range(3):
        served = await predict(client)
        assert (served.status, served.version) == (200, "1")
        np.testing.assert_allclose(served.body["outputs"][0]["data"],  # type: ignore[index]
                                   scaled_answer(1.0), rtol=1e-5)
    await wait_until(lambda: metric(client, "gateway_mirror_requests_total", route="shadowed",
                                    result="ok") == 3)
    assert metric(client, "gateway_mirror_duration_seconds_count", route="shadowed") == 3
    largest = metric(client, "gateway_mirror_max_abs_difference_sum", route="shadowed")
    for reason in ("value", "outputs", "shape", "dtype"):
        expected = 3 if reason == disagreement else 0
        assert metric(client, "gateway_mirror_disagreements_total", route="shadowed",
                      reason=reason) == expected
    if disagreement == "value":
        expected_difference = np.max(np.abs(np.subtract(scaled_answer(1.0),
                                                        scaled_answer(0.5))))
        assert largest == pytest.approx(3 * expected_difference, rel=1e-4)
    else:
        assert largest == 0


async def test_a_hung_or_failing_mirror_never_delays_or_fails_the_primary(
        make_client: MakeClient, tmp_path: Path, repo: Path,
        start_standin: StartStandIn) -> None:
    standin = await start_standin()
    client = await gateway(make_client, tmp_path, repo,
                           MIRROR.format(mirror='adapter = "tf"\nmodel = "tfdemo"',
                                         timeout_ms=60_000),
                           tfserving_config(standin.address))
    standin.pause()
    for _ in range(2):
        served = await predict(client)  # answers while its mirrored call is held
        assert (served.status, served.version) == (200, "1")
    await wait_until(lambda: standin.waiting == 2)
    standin.resume()
    await wait_until(lambda: metric(client, "gateway_mirror_requests_total", route="shadowed",
                                    result="ok") == 2)
    await standin.stop()
    assert (await predict(client)).status == 200
    await wait_until(lambda: metric(client, "gateway_mirror_requests_total", route="shadowed",
                                    result="error") == 1)


async def test_mirrors_have_their_own_deadline_and_a_bound_on_calls_in_flight(
        make_client: MakeClient, tmp_path: Path, repo: Path,
        start_standin: StartStandIn) -> None:
    standin = await start_standin()
    client = await gateway(make_client, tmp_path, repo,
                           MIRROR.format(mirror='adapter = "tf"\nmodel = "tfdemo"',
                                         timeout_ms=500),
                           tfserving_config(standin.address),
                           policies="mirror_max_in_flight = 1")
    standin.pause()
    for _ in range(3):
        assert (await predict(client)).status == 200
    assert metric(client, "gateway_mirror_requests_total", route="shadowed",
                  result="skipped") == 2
    await wait_until(lambda: metric(client, "gateway_mirror_requests_total", route="shadowed",
                                    result="timeout") == 1)
    standin.resume()
