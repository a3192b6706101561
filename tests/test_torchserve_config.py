"""`[adapters.NAME] kind = "torchserve"`: the keys, their defaults, and errors that name the
line and key and say what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.torchserve.config import TorchServeAdapterConfig
from gateway.config import ConfigError, load_config


def load(tmp_path: Path, body: str) -> TorchServeAdapterConfig:
    path = tmp_path / "gateway.toml"
    path.write_text('[adapters.ts]\nkind = "torchserve"\n' + body)
    config = load_config(path).adapters["ts"]
    assert isinstance(config, TorchServeAdapterConfig)
    return config


def test_rest_is_the_default_protocol(tmp_path: Path) -> None:
    config = load(tmp_path, 'rest_endpoints = ["http://10.0.0.1:8080", "http://10.0.0.2:8080"]\n'
                            'management_endpoints = ["10.0.0.1:7071"]\n')
    assert config == TorchServeAdapterConfig(
        name="ts", management_endpoints=("10.0.0.1:7071",), protocol="rest",
        rest_endpoints=("http://10.0.0.1:8080", "http://10.0.0.2:8080"))


def test_grpc_is_chosen_by_name(tmp_path: Path) -> None:
    config = load(tmp_path, 'protocol = "grpc"\nendpoints = ["10.0.0.1:7070"]\n'
                            'management_endpoints = ["10.0.0.1:7071"]\n')
    assert (config.protocol, config.endpoints, config.rest_endpoints) == (
        "grpc", ("10.0.0.1:7070",), ())


def test_every_key(tmp_path: Path) -> None:
    config = load(tmp_path, """
protocol = "rest"
rest_endpoints = ["http://ts-a:8080/", "https://ts-b:8443"]
management_endpoints = ["ts-a:7071"]
streaming_models = ["llm"]
discovery_interval_s = 1.5
max_message_bytes = 2048
keepalive_time_s = 10
connect_timeout_s = 0.5
""")
    assert (config.protocol, config.endpoints, config.rest_endpoints) == (
        "rest", (), ("http://ts-a:8080", "https://ts-b:8443"))
    assert (config.streaming_models, config.discovery_interval_s, config.pool.max_message_bytes,
            config.pool.keepalive_time_s, config.pool.connect_timeout_s) == (
        ("llm",), 1.5, 2048, 10.0, 0.5)


@pytest.mark.parametrize(("body", "fragments"), [
    ('protocol = "grpc"\nmanagement_endpoints = ["h:1"]\n',
     ["adapters.ts.endpoints", 'non-empty list of "host:port"']),
    ('protocol = "grpc"\nendpoints = ["h:1"]\n',
     ["adapters.ts.management_endpoints", "non-empty list"]),
    ('endpoints = ["h:1"]\nmanagement_endpoints = ["h:2"]\n',
     ["adapters.ts.rest_endpoints", 'non-empty list of "http://host:port"']),
    ('protocol = "rest"\nrest_endpoints = ["h:8080"]\nmanagement_endpoints = ["h:2"]\n',
     [":4:", "adapters.ts.rest_endpoints", "expected \"http://host:port\", got 'h:8080'"]),
    ('protocol = "grpc"\nendpoints = ["h"]\nmanagement_endpoints = ["h:2"]\n',
     [":4:", "adapters.ts.endpoints", "expected \"host:port\", got 'h'"]),
    ('protocol = "http"\nendpoints = ["h:1"]\nmanagement_endpoints = ["h:2"]\n',
     ["adapters.ts.protocol", "grpc", "rest"]),
    ('endpoints = ["h:1"]\nmanagement_endpoints = ["h:2"]\nstreaming = ["x"]\n',
     ["adapters.ts.streaming", "unknown key"]),
])
def test_mistakes_are_named(tmp_path: Path, body: str, fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, body)
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_torchserve_models_take_no_batching_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, 'rest_endpoints = ["http://h:1"]\nmanagement_endpoints = ["h:2"]\n'
                       '[models.m]\nadapter = "ts"\n[models.m.batching]\nmax_batch_size = 4\n')
    assert "(torchserve) batches itself" in str(caught.value)
