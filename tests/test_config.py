"""Config validation: errors name the file, the line and the key, and say what was expected."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
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
