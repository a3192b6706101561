"""deploy/: the compose stack, its config files and the Grafana dashboard, checked by parsing
them (Docker cannot run here) and against a live gateway: every metric the dashboard queries
is one the gateway exports once it has seen some traffic."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from aiohttp.test_utils import TestClient

from gateway.cli import main as gateway_cli
from tests.auth_support import bearer, claims, hs_provider, sign
from tests.redis_server import redis_server  # noqa: F401 (a fixture)
from tests.servers.tfserving_standin import dead_address, tfserving_config

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
V2_BODY = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}


def load_yaml(name: str) -> Any:
    return yaml.safe_load((DEPLOY / name).read_text())


def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads((DEPLOY / "grafana" / "gateway.json").read_text())
    return document


def queries(document: dict[str, Any]) -> Iterator[str]:
    """Every PromQL expression: panel targets and template variable queries."""
    for panel in document["panels"]:
        for target in panel.get("targets", ()):
            yield target["expr"]
    for variable in document["templating"]["list"]:
        if variable["type"] == "query":
            yield variable["query"]["query"]


def metric_names(expression: str) -> set[str]:
    return set(re.findall(r"\b(gateway_[a-z_]+)\b", expression))


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def test_compose_services_and_their_files() -> None:
    compose = load_yaml("compose.yaml")
    services = compose["services"]
    assert set(services) == {"gateway", "redis", "otel-collector", "jaeger", "prometheus",
                             "grafana"}
    for service in services.values():
        for volume in service.get("volumes", ()):
            source = volume.split(":")[0]
            assert (DEPLOY / source).exists(), f"{source} is mounted but missing"
        for dependency in service.get("depends_on", ()):
            assert dependency in services
    build = services["gateway"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()
    assert "--enable-feature=exemplar-storage" in services["prometheus"]["command"]


def test_the_gateway_exports_to_the_collector_that_feeds_jaeger() -> None:
    compose, collector = load_yaml("compose.yaml"), load_yaml("otel-collector.yaml")
    endpoint = urlsplit(compose["services"]["gateway"]["environment"]
                        ["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert endpoint.hostname == "otel-collector"
    grpc_receiver = collector["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    assert port_of(grpc_receiver) == endpoint.port
    pipeline = collector["service"]["pipelines"]["traces"]
    for kind in ("receivers", "processors", "exporters"):
        assert set(pipeline[kind]) <= set(collector[kind]), kind
    assert collector["exporters"]["otlp/jaeger"]["endpoint"].split(":")[0] == "jaeger"
    assert compose["services"]["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"


def test_prometheus_scrapes_the_gateway_and_loads_the_alerts() -> None:
    """That it negotiates OpenMetrics (exemplars) and that the rules work is shown against a
    real Prometheus (tests/test_prometheus.py)."""
    config = load_yaml("prometheus.yml")
    scrape = config["scrape_configs"][0]
    [target] = scrape["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host == "gateway" and scrape["metrics_path"] == "/metrics"
    assert f"{port}:{port}" in load_yaml("compose.yaml")["services"]["gateway"]["ports"]
    assert f"http_port = {port}" in (DEPLOY / "gateway.toml").read_text()
    mounts = load_yaml("compose.yaml")["services"]["prometheus"]["volumes"]
    for rules in config["rule_files"]:  # relative to the config, here and in the container
        assert (DEPLOY / rules).is_file()
        assert f"./{Path(rules).parent}:/etc/prometheus/{Path(rules).parent}:ro" in mounts


def test_grafana_links_exemplars_to_jaeger_and_loads_the_dashboard() -> None:
    sources = {s["uid"]: s for s in load_yaml(
        "grafana/provisioning/datasources/datasources.yaml")["datasources"]}
    assert sources["jaeger"]["type"] == "jaeger"
    [destination] = sources["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert (destination["name"], destination["datasourceUid"]) == ("trace_id", "jaeger")
    [provider] = load_yaml("grafana/provisioning/dashboards/dashboards.yaml")["providers"]
    mounts = load_yaml("compose.yaml")["services"]["grafana"]["volumes"]
    assert f"./grafana/gateway.json:{provider['options']['path']}/gateway.json:ro" in mounts


def test_the_deployed_config_is_valid(tmp_path: Path) -> None:
    # As the container sees it: the image's models at /app/models, deploy/policies mounted
    # next to the config (check-config refuses a repository that does not exist).
    text = (DEPLOY / "gateway.toml").read_text()
    assert 'repository = "/app/models"' in text
    (tmp_path / "policies").symlink_to(DEPLOY / "policies")
    config = tmp_path / "gateway.toml"
    config.write_text(text.replace('"/app/models"', f'"{DEPLOY.parent / "models"}"'))
    assert gateway_cli(["check-config", str(config)]) == 0


def test_the_dashboard_is_well_formed() -> None:
    document = dashboard()
    panels = document["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    titles = {p["title"] for p in panels}
    for wanted in ("Requests by model and variant", "Request latency by model and variant",
                   "Rows per batch", "Limiter rejections", "Errors by kind"):
        assert wanted in titles
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        for target in panel.get("targets", ()):
            assert target["datasource"]["uid"] == "${datasource}"
            assert target["expr"].count("(") == target["expr"].count(")")


async def test_every_metric_the_dashboard_queries_is_exported(
        redis_server: str, make_client: Callable[..., Any], tmp_path: Path) -> None:  # noqa: F811
    # Redis first, so it is torn down after the gateway has closed.
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "limits.toml").write_text(
        '[[limits]]\nname = "per-caller"\nmodels = ["*"]\nrate = 1\nperiod_s = 3600\n'
        'burst = 2\n')
    client: TestClient = await make_client(
        f'[auth]\nenabled = true\n{hs_provider()}\n[redis]\nurl = "{redis_server}"\n'
        f'timeout_ms = 2000\n[policies]\ndirectory = "{policies}"\n'
        + tfserving_config(dead_address(), models=(), adapter="remote"))  # a pool's metrics
    token = bearer(sign(claims(time.time(), scope="predict")))
    statuses = [(await client.post("/v2/models/demo/infer", json=V2_BODY, headers=token)).status
                for _ in range(3)]
    statuses.append((await client.post("/v2/models/demo/infer", json=V2_BODY)).status)
    assert statuses == [200, 200, 429, 401]
    text = await (await client.get("/metrics")).text()
    exported = {line.split("{")[0].split(" ")[0] for line in text.splitlines()
                if line and not line.startswith("#")}
    queried = set().union(*(metric_names(q) for q in queries(dashboard())))
    assert len(queried) >= 10
    assert queried <= exported, f"queried but not exported: {sorted(queried - exported)}"
