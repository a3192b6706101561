"""Config validation: errors name the file, the line and the key, and say what was expected."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from adapters.onnx.checks import label_problems
from gateway.cli import main as gateway_cli
from gateway.config import ConfigError, load_config
from tests.conftest import put_model
from tests.onnx_models import demo_bytes

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "m").mkdir(exist_ok=True)  # the repository the examples below name
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def test_the_shipped_config_is_valid() -> None:
    config = load_config(ROOT / "gateway.toml")
    assert config.server.host == "127.0.0.1" and config.server.http_port == 8080
    assert config.adapters["local"].repository == ROOT / "models"
    assert config.models["demo"].labels == {"stable": 1}
    assert config.management_adapter == "local"


def test_defaults_for_an_empty_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))
    assert config.server.host == "127.0.0.1"
    assert config.server.request_timeout_ms == 30_000
    assert config.adapters == {} and config.management_adapter is None


def test_batching_inherits_from_the_adapter(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, """
[adapters.a]
kind = "onnx"
repository = "m"
[adapters.a.batching]
max_batch_size = 8
max_queue_delay_ms = 2
[models.x]
adapter = "a"
[models.x.batching]
max_queue_size = 5
"""))
    batching = config.models["x"].batching
    assert batching is not None
    assert (batching.max_batch_size, batching.max_queue_delay_ms, batching.max_queue_size) == (
        8, 2.0, 5)
    assert config.adapters["a"].repository == tmp_path / "m"


@pytest.mark.parametrize(("text", "fragments"), [
    ("[server]\nhttp_prot = 80\n", [":2:", "server.http_prot", "unknown key"]),
    ("[server]\nhttp_port = \"80\"\n", [":2:", "server.http_port", "expected an integer"]),
    ("[server]\nhttp_port = 70000\n", ["server.http_port", "<= 65535"]),
    ("[server]\naccess_log = 1\n", ["server.access_log", "expected true or false"]),
    ("[server]\nlog_level = \"loud\"\n", ["server.log_level", "one of 'debug'"]),
    ("[adapters.a]\nrepository = \"m\"\n", ["adapters.a.kind", "missing"]),
    ("[adapters.a]\nkind = \"tf\"\nrepository = \"m\"\n", ["adapters.a.kind", "'onnx'"]),
    ("[adapters.a]\nkind = \"onnx\"\nrepository = \"m\"\n\n[adapters.a.batching]\n"
     "max_batch_size = 0\n", [":6:", "adapters.a.batching.max_batch_size", ">= 1"]),
    ("[models.x]\nadapter = \"nope\"\n", [":2:", "models.x.adapter", "no adapter named 'nope'"]),
    ("[adapters.a]\nkind = \"onnx\"\nrepository = \"m\"\n[models.x]\nadapter = \"a\"\n"
     "version_policy = \"specific\"\n", ["models.x.versions", "non-empty list"]),
    ("[adapters.a]\nkind = \"onnx\"\nrepository = \"m\"\n[models.x]\nadapter = \"a\"\n"
     "labels = { stable = \"one\" }\n", [":6:", "models.x.labels.stable", "integer"]),
    ("[server\n", ["not valid TOML"]),
    ("[server]\nworkers = 0\n", [":2:", "server.workers", ">= 1"]),
    ("[server]\nworkers = \"all\"\n", [":2:", "server.workers", "one of 'auto'"]),
])
def test_invalid_configs_name_file_line_and_key(tmp_path: Path, text: str,
                                                fragments: list[str]) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert message.startswith(str(path))
    for fragment in fragments:
        assert fragment in message


def test_workers_auto_means_the_cores_this_process_may_use(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")).server.workers == 1
    config = load_config(write(tmp_path, '[server]\nworkers = "auto"\n'))
    assert config.server.workers == len(os.sched_getaffinity(0))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")


def test_check_config_command(tmp_path: Path) -> None:
    good = subprocess.run([sys.executable, "-m", "gateway", "check-config",
                           str(ROOT / "gateway.toml")], capture_output=True, text=True)
    assert good.returncode == 0 and "ok" in good.stdout
    bad = subprocess.run([sys.executable, "-m", "gateway", "check-config",
                          str(write(tmp_path, "[server]\nport = 1\n"))],
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert "server.port: unknown key" in bad.stderr


ONNX = '[adapters.a]\nkind = "onnx"\nrepository = "m"\n'
TYPO = "tpyo = 1\n"  # first in its table: the list must not depend on what was read before it
#: Every table's accepted keys, as "known keys here" must list them (and the docs describe).
#: The endpoint pool's keys, in every remote kind's table (docs/configuration.md)
POOL_KEYS = ("max_message_bytes keepalive_time_s connect_timeout_s consecutive_failures "
             "failure_rate failure_rate_window_s failure_rate_min_requests base_ejection_time_s "
             "max_ejection_time_s max_ejection_percent health_check_interval_s "
             "health_check_timeout_s healthy_threshold unhealthy_threshold tls tls_ca_file "
             "tls_cert_file tls_key_file tls_server_name")
KNOWN_KEYS = {
    "": (TYPO + ONNX, "server adapters models management auth redis policies tracing limits"),
    "server": ("[server]\n" + TYPO, "decode grpc tls"),  # + the keys docs/configuration.md lists
    "server.decode": ("[server.decode]\n" + TYPO, "max_tensor_elements max_request_elements "
                      "max_batch_rows max_dims max_bytes_elements"),
    "server.tls": ("[server.tls]\n" + TYPO, "cert_file key_file client_ca_file"),
    "server.grpc": ("[server.grpc]\n" + TYPO, "max_concurrent_streams min_ping_interval_s "
                    "max_connection_idle_s max_connection_age_s max_connection_age_grace_s"),
    "adapters.a": ('[adapters.a]\nkind = "onnx"\n' + TYPO + 'repository = "m"\n',
                   "kind repository poll_interval_s intra_op_threads inter_op_threads "
                   "batching load_timeout_s load_memory_bytes load_concurrency "
                   "run_memory_bytes"),
    "adapters.t": ('[adapters.t]\nkind = "tfserving"\n' + TYPO + 'endpoints = ["h:1"]\n',
                   "kind endpoints " + POOL_KEYS),
    "adapters.v": ('[adapters.v]\nkind = "v2"\n' + TYPO + 'endpoints = ["h:1"]\n',
                   "kind endpoints " + POOL_KEYS),
    "adapters.ts": ('[adapters.ts]\nkind = "torchserve"\n' + TYPO + 'endpoints = ["h:1"]\n'
                    'management_endpoints = ["h:2"]\n',
                    "kind protocol endpoints rest_endpoints management_endpoints "
                    "streaming_models discovery_interval_s " + POOL_KEYS),
    "adapters.a.batching": (ONNX + "[adapters.a.batching]\n" + TYPO,
                            "max_batch_size max_queue_delay_ms max_queue_size "
                            "concurrent_batches"),
    "models.x": (ONNX + "[models.x]\n" + TYPO + 'adapter = "a"\n',
                 "adapter version_policy latest versions labels batching"),
    "management": ("[management]\n" + TYPO, "adapter"),
    "auth": ("[auth]\n" + TYPO, "enabled leeway_s required_claims token_cache_size "
             "scope_claim providers scopes"),
    "auth.scopes": ("[auth.scopes]\n" + TYPO, "predict read manage admin"),
    "auth.providers[0]": ("[[auth.providers]]\n" + TYPO,
                          "name issuer audiences algorithms secret secret_env key_file "
                          "public_key jwks_url jwks_ttl_s jwks_min_refresh_s"),
    "redis": ("[redis]\n" + TYPO + 'url = "redis://h"\n',
              "url url_env timeout_ms breaker_failures breaker_reset_s lease_max_share "
              "lease_ttl_ms tls_ca_file tls_cert_file tls_key_file mode nodes sentinels "
              "service_name sentinel_password_env"),
    "limits": ("[limits]\n" + TYPO, "store memory_max_keys"),
    "policies": ("[policies]\n" + TYPO,
                 "directory poll_interval_s history mirror_max_in_flight redis_key"),
    "tracing": ("[tracing]\n" + TYPO,
                "exporter protocol endpoint service_name sampler sampler_arg detail "
                "keep_errors slow_ms"),
}


@pytest.mark.parametrize("table", list(KNOWN_KEYS))
def test_an_unknown_key_lists_every_key_its_table_accepts(tmp_path: Path, table: str) -> None:
    text, keys = KNOWN_KEYS[table]
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text))
    name = f"{table}.tpyo" if table else "tpyo"
    assert f"{name}: unknown key (known keys here: " in str(error.value)
    listed = str(error.value).split("known keys here: ")[1].rstrip(")").split(", ")
    expected = keys.split() + (documented_keys("## `[server]`") if table == "server" else [])
    assert listed == sorted(expected), (
        f"not in docs/configuration.md: {sorted(set(listed) - set(expected))}; "
        f"not parsed: {sorted(set(expected) - set(listed))}")


def documented_keys(heading: str) -> list[str]:
    """The keys of the first table after `heading` in docs/configuration.md."""
    text = (ROOT / "docs/configuration.md").read_text().split(heading + "\n", 1)[1]
    rows = text.split("\n| key |", 1)[1].split("\n\n", 1)[0].splitlines()[2:]
    return [row.split("`")[1] for row in rows]


def test_an_unknown_key_is_named_before_any_other_mistake_in_its_table(tmp_path: Path) -> None:
    path = write(tmp_path, ONNX + '[models.x]\nadaptr = "a"\nlatest = 0\n')
    with pytest.raises(ConfigError, match=r":5: models.x.adaptr: unknown key \(known keys "
                       r"here: adapter, batching, labels, latest, version_policy, versions\)"):
        load_config(path)
    path = write(tmp_path, '[server]\nhttp_prot = 1\nmax_hedaers = 2\nhost = 3\n')
    with pytest.raises(ConfigError, match=r":2: server.http_prot: unknown key \(.*\); also "
                       r"unknown: max_hedaers$"):
        load_config(path)


def test_an_onnx_repository_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, '[adapters.a]\nkind = "onnx"\nrepository = "modles"\n')
    with pytest.raises(ConfigError, match=rf"^{path}:3: adapters.a.repository: {tmp_path}/modles "
                       r"is not a directory \(create it, even empty"):
        load_config(path)
    (tmp_path / "modles").mkdir()  # empty is fine: models may come by upload
    assert load_config(path).adapters["a"].repository == tmp_path / "modles"


def labelled(tmp_path: Path, labels: str, policy: str = "") -> Path:
    for version in (1, 2):
        put_model(tmp_path / "m", "x", version, demo_bytes())
    return write(tmp_path, ONNX + f'\n[models.x]\nadapter = "a"\n{policy}labels = {labels}\n')


def test_labels_must_name_a_version_the_repository_serves(tmp_path: Path) -> None:
    assert label_problems(load_config(labelled(tmp_path, "{ stable = 2 }"))) == []
    path = labelled(tmp_path, "{ stable = 2, canary = 3, old = 1 }")
    assert label_problems(load_config(path)) == [
        f"{path}:7: models.x.labels.canary: version 3 is not in the repository "
        f"({tmp_path}/m/x holds versions: 1, 2)",
        f"{path}:7: models.x.labels.old: version 1 is in the repository but version_policy "
        "'latest' with latest = 1 does not serve it (it serves 2)"]
    path = labelled(tmp_path, "{ old = 1 }", policy='version_policy = "all"\n')
    assert label_problems(load_config(path)) == []


def test_check_config_fails_on_a_label_without_its_version(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An error, not a warning: check-config runs before a rollout, and a label that names a
    missing version is a typo or a forgotten upload that would answer every request 404.
    `serve` only warns (the repository changes while it runs; see tests/test_cli.py)."""
    path = labelled(tmp_path, "{ stable = 2, canary = 3 }")
    assert gateway_cli(["check-config", str(path)]) == 2
    assert capsys.readouterr().err == (
        f"gateway: invalid config: {path}:7: models.x.labels.canary: version 3 is not in the "
        f"repository ({tmp_path}/m/x holds versions: 1, 2)\n")
    labelled(tmp_path, "{ stable = 2 }")
    assert gateway_cli(["check-config", str(path)]) == 0
