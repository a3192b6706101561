"""`[tracing]` and the OTEL_* environment: defaults, the environment winning, errors that name
the key's line or the variable, and the provider built from the result."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config
from gateway.telemetry.config import TracingConfig, parse_tracing_config
from gateway.telemetry.setup import build_tracing
from gateway.tomlconfig import Source


def parse(text: str, environ: dict[str, str] | None = None) -> TracingConfig:
    source = Source(Path("gateway.toml"), text)
    return parse_tracing_config(source.root().table("tracing"), environ or {})


def test_tracing_is_off_by_default(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text("")
    config = load_config(path).tracing
    assert config == TracingConfig() and not config.enabled
    assert build_tracing(config) is None


def test_the_file_configures_an_otlp_exporter() -> None:
    config = parse('[tracing]\nexporter = "otlp"\nprotocol = "http/protobuf"\n'
                   'endpoint = "http://collector:4318/"\nservice_name = "edge"\n'
                   'sampler = "parentbased_traceidratio"\nsampler_arg = 0.25\n')
    assert config == TracingConfig(("otlp",), "http/protobuf", "http://collector:4318/v1/traces",
                                   "edge", "parentbased_traceidratio", 0.25)


def test_the_detail_and_the_tail_rules_come_from_the_file() -> None:
    assert (TracingConfig().detail, TracingConfig().keep_errors, TracingConfig().slow_ms) == (
        "request", True, 0.0)
    config = parse('[tracing]\ndetail = "steps"\nkeep_errors = false\nslow_ms = 250\n')
    assert (config.detail, config.keep_errors, config.slow_ms) == ("steps", False, 250.0)


def test_the_environment_wins_over_the_file() -> None:
    text = ('[tracing]\nexporter = "none"\nprotocol = "http/protobuf"\n'
            'endpoint = "http://file:4318"\nservice_name = "file"\nsampler = "always_off"\n')
    config = parse(text, {
        "OTEL_TRACES_EXPORTER": "otlp,console", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:4317", "OTEL_SERVICE_NAME": "env",
        "OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.5"})
    assert config == TracingConfig(("otlp", "console"), "grpc", "http://env:4317", "env",
                                   "traceidratio", 0.5)


def test_signal_specific_variables_win_over_general_ones() -> None:
    config = parse('[tracing]\nexporter = "otlp"\n', {
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://general:4318",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://own:4318/custom/path"})
    assert (config.protocol, config.endpoint) == ("http/protobuf", "http://own:4318/custom/path")
    general = parse('[tracing]\nexporter = "otlp"\nprotocol = "http/protobuf"\n',
                    {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://general:4318"})
    assert general.endpoint == "http://general:4318/v1/traces"


def test_the_sdk_can_be_disabled_and_none_turns_tracing_off() -> None:
    assert not parse('[tracing]\nexporter = "otlp"\n', {"OTEL_SDK_DISABLED": "true"}).enabled
    assert not parse('[tracing]\nexporter = "otlp"\n', {"OTEL_TRACES_EXPORTER": "none"}).enabled


@pytest.mark.parametrize(("text", "message"), [
    ('[tracing]\nexporter = "jaeger"\n',
     "gateway.toml:2: tracing.exporter: expected one of 'otlp', 'console', 'none'"),
    ('[tracing]\nsampler_arg = 1.5\n',
     "gateway.toml:2: tracing.sampler_arg: expected a ratio between 0 and 1, got 1.5"),
    ('[tracing]\nexporter = "otlp"\nheaders = "x"\n',
     "gateway.toml:3: tracing.headers: unknown key"),
    ('[tracing]\nexporter = "otlp"\ndetail = "spans"\n',
     "gateway.toml:3: tracing.detail: expected one of 'request', 'steps', got 'spans'"),
    ('[tracing]\nslow_ms = -5\n', "gateway.toml:2: tracing.slow_ms: "),
    ('[tracing]\nkeep_errors = "yes"\n',
     "gateway.toml:2: tracing.keep_errors: expected true or false, got 'yes'"),
])
def test_a_bad_key_names_its_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match="^" + message.replace(".", r"\.")):
        parse(text)


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("OTEL_TRACES_EXPORTER", "zipkin", "a comma-separated list of otlp, console, none"),
    ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json", "one of grpc, http/protobuf"),
    ("OTEL_TRACES_SAMPLER", "jaeger_remote", "one of always_on"),
    ("OTEL_TRACES_SAMPLER_ARG", "half", "a ratio between 0 and 1"),
    ("OTEL_TRACES_SAMPLER_ARG", "2", "a ratio between 0 and 1"),
])
def test_a_bad_variable_is_named(name: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse("", {name: value})
    assert str(raised.value).startswith(f"environment variable {name}: expected {expected}")
    assert str(raised.value).endswith(f"got {value!r}")


def test_the_tracing_follows_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
    tracing = build_tracing(TracingConfig(("console",), service_name="edge",
                                          sampler="parentbased_traceidratio", sampler_arg=0.1,
                                          detail="steps"))
    assert tracing is not None
    assert tracing.resource.attributes["service.name"] == "edge"
    assert tracing.resource.attributes["deployment.environment"] == "test"
    assert tracing.tracer.steps


def test_a_resource_attribute_service_name_wins_over_the_file(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-env")
    tracing = build_tracing(TracingConfig(("console",), service_name="edge"))
    assert tracing is not None
    assert tracing.resource.attributes["service.name"] == "from-env"
    assert not tracing.tracer.steps  # detail = "request" by default
