"""Shared fixtures: model repositories on disk, config files, and a gateway on a free port."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import Gateway
from gateway.config import load_config
from tests.onnx_models import demo_bytes, multi_io_bytes, slow_bytes
from tests.waiting import models_loaded


def put_model(repo: Path, name: str, version: int, data: bytes) -> Path:
    path = repo / name / str(version) / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository with `demo` v1, `multi` v1 and `slow` v1."""
    root = tmp_path / "models"
    put_model(root, "demo", 1, demo_bytes())
    put_model(root, "multi", 1, multi_io_bytes())
    put_model(root, "slow", 1, slow_bytes())
    return root


WriteConfig = Callable[..., Path]


@pytest.fixture
def write_config(tmp_path: Path, repo: Path) -> WriteConfig:
    """Writes a gateway.toml over `repo`; `extra` is appended TOML, the keywords go into
    their tables."""

    def write(extra: str = "", *, batching: str = "", server: str = "",
              adapter: str = "") -> Path:
        path = tmp_path / "gateway.toml"
        path.write_text(textwrap.dedent(f"""\
            [server]
            http_port = 0
            {server}

            [adapters.local]
            kind = "onnx"
            repository = "{repo}"
            poll_interval_s = 0.05
            {adapter}

            [adapters.local.batching]
            {batching}

            [models.demo]
            adapter = "local"
            labels = {{ stable = 1 }}
            """) + textwrap.dedent(extra))
        return path

    return write


MakeClient = Callable[..., "TestClient"]


@pytest.fixture
async def make_client(aiohttp_client: Callable[..., object],
                      write_config: WriteConfig) -> Callable[..., object]:
    """A running gateway (aiohttp's test server: 127.0.0.1, a free port) for a config."""

    async def make(extra: str = "", **kwargs: str) -> TestClient:
        gateway = Gateway(load_config(write_config(extra, **kwargs)))
        client = await aiohttp_client(gateway.http_app())  # type: ignore[operator]
        client.gateway = gateway  # type: ignore[attr-defined]
        await models_loaded(gateway)  # models load after the gateway starts
        return client  # type: ignore[no-any-return]

    return make


@pytest.fixture
async def client(make_client: Callable[..., object]) -> TestClient:
    return await make_client()  # type: ignore[operator, no-any-return]
