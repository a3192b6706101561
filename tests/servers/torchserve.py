"""Fixtures for a real TorchServe (see `tests.servers.torchserve_server`): the archives, built
once per session, and one server for the session serving all of them. Load with
`pytest_plugins = ["tests.servers.torchserve"]`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers.torchserve_server import TorchServe, build_store, require_torchserve


@pytest.fixture(scope="session")
def torchserve_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_torchserve()
    work = tmp_path_factory.mktemp("ts-build")
    store = tmp_path_factory.mktemp("ts-store")
    return build_store(store, work)


@pytest.fixture(scope="session")
def torchserve(torchserve_store: Path, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[TorchServe]:
    """One TorchServe for the session, serving every archive."""
    server = TorchServe(torchserve_store, tmp_path_factory.mktemp("ts"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def private_torchserve(torchserve_store: Path, tmp_path: Path) -> Iterator[TorchServe]:
    """A TorchServe of the test's own, one it may stop: `tiny` version 1 and `streaming`, with
    room for one waiting request per model (`job_queue_size=1`)."""
    server = TorchServe(torchserve_store, tmp_path / "ts",
                        archives=("tiny.mar", "streaming.mar"), properties=("job_queue_size=1",))
    server.start()
    yield server
    server.stop()
