"""Fixtures for a real MLServer (see `tests.servers.mlserver_server`): its model, trained once
per session, and one server for the session serving it. Load with
`pytest_plugins = ["tests.servers.mlserver"]`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers.mlserver_server import MLServer, require_mlserver, write_repository


@pytest.fixture(scope="session")
def mlserver_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_mlserver()
    return write_repository(tmp_path_factory.mktemp("mlserver-models"))


@pytest.fixture(scope="session")
def mlserver(mlserver_repository: Path, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[MLServer]:
    """One MLServer for the session, serving `classes`."""
    server = MLServer(mlserver_repository, tmp_path_factory.mktemp("mlserver"))
    server.start()
    yield server
    server.stop()
