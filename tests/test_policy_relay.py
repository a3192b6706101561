"""Workers sharing policies through their supervisor (`PolicyRelay`), in one process: editors
of two workers wired to one relay as the supervisor wires them over the channel. A change on
one runs on the other with the same number; equal content is not numbered twice; a worker
that starts later adopts the running version; rollback uses the shared history."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from gateway.channel import PUBLISH, Message
from gateway.policy.editor import ADMIN, FILES, PolicyEditor
from gateway.policy.metrics import RoutingMetrics
from gateway.policy.relay import PolicyRelay, RelayPolicySync
from tests.test_policy_editor import adapter_of, route_to, sources
from tests.waiting import wait_until


class Supervisor:
    """What gateway/supervisor.py does with the relay, without processes or sockets."""

    def __init__(self, keep: int = 20) -> None:
        self.relay = PolicyRelay(keep)
        self.workers: list[asyncio.Queue[Message]] = []

    def link(self) -> RelayPolicySync:
        announcements: asyncio.Queue[Message] = asyncio.Queue()
        self.workers.append(announcements)

        async def request(message: Message) -> Message:
            if message["kind"] != PUBLISH:
                return self.relay.versions()
            reply, announcement = self.relay.publish(message)
            if announcement is not None:
                for worker in self.workers:
                    worker.put_nowait(announcement)
            return reply

        return RelayPolicySync(request, announcements)


StartWorker = Callable[..., Awaitable[PolicyEditor]]


@pytest.fixture
async def start_worker() -> AsyncIterator[StartWorker]:
    supervisor = Supervisor()
    editors: list[PolicyEditor] = []

    async def start(directory: Path | None = None) -> PolicyEditor:
        editor = PolicyEditor({"a", "b"}, directory, 20, RoutingMetrics(CollectorRegistry()),
                              supervisor.link())
        await editor.start()
        editors.append(editor)
        return editor

    yield start
    for editor in editors:
        await editor.close()


def number(editor: PolicyEditor) -> int:
    return editor.store.active.version.number


async def test_a_change_on_one_worker_runs_on_the_other_with_its_number(
        start_worker: StartWorker) -> None:
    first, second = await start_worker(), await start_worker()
    version = await first.apply(sources("b"), ADMIN)
    await wait_until(lambda: number(second) == version.number, within=1.0)
    assert adapter_of(second) == "b" and second.store.active.version.origin == ADMIN


async def test_workers_reading_the_same_files_agree_on_one_version(
        tmp_path: Path, start_worker: StartWorker) -> None:
    (tmp_path / "p.toml").write_text(route_to("a"))
    first, second = await start_worker(tmp_path), await start_worker(tmp_path)
    assert number(first) == number(second) == 1
    (tmp_path / "p.toml").write_text(route_to("b"))
    await asyncio.gather(first.reload_files(), second.reload_files())
    assert number(first) == number(second) == 2
    assert first.store.active.version.origin == second.store.active.version.origin == FILES


async def test_a_worker_started_later_adopts_the_running_version_and_its_history(
        start_worker: StartWorker) -> None:
    first = await start_worker()
    await first.apply(sources("a"), ADMIN)
    await first.apply(sources("b"), ADMIN)
    late = await start_worker()
    assert number(late) == 2 and adapter_of(late) == "b"
    restored = await late.rollback()
    assert adapter_of(late) == "a"
    await wait_until(lambda: number(first) == restored.number, within=1.0)
    assert adapter_of(first) == "a"


def test_the_relay_numbers_past_the_floor_and_keeps_the_last_versions() -> None:
    relay = PolicyRelay(keep=2)
    numbers = []
    for content in ("x", "y", "z"):
        reply, announcement = relay.publish({"hash": content, "record": content, "floor": 5})
        assert announcement is not None and announcement["number"] == reply["number"]
        numbers.append(reply["number"])
    assert numbers == [6, 7, 8]  # a worker that already ran 5 never sees a number again
    same, announcement = relay.publish({"hash": "z", "record": "z again", "floor": 0})
    assert (same, announcement) == ({"number": 8, "record": "z"}, None)
    assert relay.versions() == {"versions": [(7, "y"), (8, "z")]}
