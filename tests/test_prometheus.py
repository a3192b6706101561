"""The dashboard and the alerts, proven against a real Prometheus (Debian's 2.42): it scrapes a
gateway under a little traffic with the deployed config, every PromQL expression of
deploy/grafana/gateway.json returns data through its HTTP API, the alerting rules load and
evaluate without error, exemplars link latency to traces; `promtool` accepts the config and
passes the rules' unit tests (deploy/rules/alerts_test.yml)."""

from __future__ import annotations

import math
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from aiohttp.test_utils import TestClient

from tests.auth_support import bearer, claims, hs_provider, sign
from tests.redis_server import redis_server  # noqa: F401 (a fixture)
from tests.servers.otlp_receiver import OtlpReceiver
from tests.servers.prometheus import (  # noqa: F401 (a fixture)
    PROMTOOL,
    PrometheusServer,
    StartPrometheus,
    require_prometheus,
    start_prometheus,
)
from tests.servers.running_gateway import StartGateway
from tests.servers.tfserving_standin import TfServingStandIn
from tests.test_deploy import DEPLOY, dashboard
from tests.waiting import wait_until

pytest_plugins = ["tests.servers.fixtures"]

V2_BODY = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
TF_BODY = {"instances": [[1.0, 2.0, 3.0, 4.0]]}
#: what Grafana puts in for the dashboard's variables: every model, and a rate window that
#: covers the test's traffic (Grafana's is 4 scrape intervals or more)
VARIABLES = {"$model": ".*", "$__rate_interval": "30s"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    require_prometheus()
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)


def test_promtool_accepts_the_deployed_config_and_its_rules() -> None:
    result = promtool("check", "config", str(DEPLOY / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 9 rules found" in result.stdout


def test_the_alerting_rules_pass_their_unit_tests() -> None:
    result = promtool("test", "rules", str(DEPLOY / "rules" / "alerts_test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def panel_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every panel target, the variables filled in as Grafana does."""
    found = []
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", ()):
            expression = target["expr"]
            for variable, value in VARIABLES.items():
                expression = expression.replace(variable, value)
            found.append((panel["title"], expression))
    return found


def finite(result: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(sample["value"][1])) for sample in result)


async def traffic(client: TestClient, standin: TfServingStandIn, caller: str) -> None:
    """A little of everything the dashboard shows: answers from the in-process model (batched)
    and TF Serving, a refused token, a rate limit, an unknown path, a backend failure."""
    token = bearer(sign(claims(time.time(), sub=caller, scope="predict")))
    statuses = [(await client.post("/v2/models/demo/infer", json=V2_BODY, headers=token)).status
                for _ in range(3)]  # the limit's burst is 2 per caller
    for _ in range(5):
        statuses.append((await client.post("/v1/models/tfdemo:predict", json=TF_BODY,
                                           headers=token)).status)
    standin.fail_next("Predict", grpc.StatusCode.INTERNAL, "the backend broke")
    statuses.append((await client.post("/v1/models/tfdemo:predict", json=TF_BODY,
                                       headers=token)).status)
    statuses.append((await client.post("/v2/models/demo/infer", json=V2_BODY)).status)
    statuses.append((await client.post("/v2/models/nope/infer", json=V2_BODY,
                                       headers=token)).status)
    assert statuses == [200, 200, 429, *[200] * 5, 502, 401, 404]


async def scraped_since(prometheus: PrometheusServer, client: TestClient) -> Callable[[], Any]:
    """A condition: Prometheus has a sample of requests answered that counts all answered now."""
    text = await (await client.get("/metrics")).text()
    answered = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("gateway_requests_total{"))

    async def caught_up() -> bool:
        result = await prometheus.query("sum(gateway_requests_total)")
        return bool(result) and float(result[0]["value"][1]) >= answered

    return caught_up


async def test_every_dashboard_query_and_alert_works_on_a_scraped_gateway(
        traced: OtlpReceiver, redis_server: str, start_gateway: StartGateway,  # noqa: F811
        standin: TfServingStandIn, start_prometheus: StartPrometheus,  # noqa: F811
        tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "limits.toml").write_text(
        '[[limits]]\nname = "per-caller"\nmodels = ["demo"]\nrate = 1\nperiod_s = 3600\n'
        'burst = 2\n')
    gw = await start_gateway(
        f'[auth]\nenabled = true\n{hs_provider()}\n[redis]\nurl = "{redis_server}"\n'
        f'timeout_ms = 2000\n[policies]\ndirectory = "{policies}"\n')
    await traffic(gw.http, standin, "alice")  # before the first scrape: every series exists
    prometheus = await start_prometheus([f"127.0.0.1:{gw.http.port}"])
    await wait_until(await scraped_since(prometheus, gw.http), within=20)
    await traffic(gw.http, standin, "bob")  # between scrapes: every rate is above zero
    await wait_until(await scraped_since(prometheus, gw.http), within=20)

    [up] = await prometheus.query('up{job="inference-gateway"}')
    assert up["value"][1] == "1"
    [ready] = await prometheus.query("gateway_ready")  # the gRPC health poll asked
    assert ready["value"][1] == "1"
    empty = []
    for title, expression in panel_queries():
        result = await prometheus.query(expression)
        if not (result and finite(result)):
            empty.append((title, expression, result))
    assert not empty, f"panels without data: {empty}"
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":  # label_values(metric, label), as Grafana asks it
            metric, label = variable["query"]["query"].removeprefix(
                "label_values(").removesuffix(")").split(", ")
            values = await prometheus.api(f"label/{label}/values", **{"match[]": metric})
            assert {"demo", "tfdemo"} <= set(values), variable

    # The alerting rules evaluate against the real series without an error, and none fires.
    async def evaluated() -> list[dict[str, Any]]:
        groups = (await prometheus.api("rules"))["groups"]
        rules: list[dict[str, Any]] = [rule for group in groups for rule in group["rules"]]
        return rules

    await wait_until(lambda: _all_evaluated(evaluated), within=10)
    rules = await evaluated()
    assert len(rules) == 9
    assert [(r["name"], r["lastError"]) for r in rules if r["health"] != "ok"] == []
    assert [r["name"] for r in rules if r["state"] == "firing"] == []

    # OpenMetrics was negotiated: the latency histogram's exemplars name traced requests.
    now = time.time()
    found = await prometheus.api("query_exemplars", query="gateway_request_duration_seconds_bucket",
                                 start=f"{now - 300:.3f}", end=f"{now:.3f}")
    trace_ids = {exemplar["labels"]["trace_id"] for series in found
                 for exemplar in series["exemplars"]}
    assert trace_ids & {span.trace_id for span in traced.spans(lambda s: s.kind == "server")}


async def _all_evaluated(rules: Callable[[], Any]) -> bool:
    return all(rule.get("lastEvaluation", "").startswith("2") for rule in await rules())
