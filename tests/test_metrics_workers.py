"""One view of the metrics of a group of workers (gateway.worker_metrics): two real `gateway
serve` processes sharing a multiprocess directory, as the supervisor starts its workers (on
ports of their own here, so a test picks the worker it scrapes or kills). A scrape of either
shows every request either answered, a killed worker's requests stay counted, and state each
worker reads (open connections) is summed over the workers. Then `gateway serve --workers 2`
itself: whichever worker answers a scrape on the shared port, it counts every request."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import prepare_multiprocess, worker_exited
from tests.drain_support import ServeProcess, request_once
from tests.test_workers import TwoWorkers, http
from tests.test_workers import gateway as two_workers  # noqa: F401 (a fixture)
from tests.waiting import wait_until

N = 40  # requests spread over both workers
DEMO_200 = {"frontend": "v2", "model": "demo", "variant": "", "status": "200"}
DEMO = {"frontend": "v2", "model": "demo", "variant": ""}
BODY = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                               "data": [1, 2, 3, 4]}]}).encode()

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


async def scrape(worker: ServeProcess) -> Samples:
    status, _, body = await request_once(worker.http_port, "GET", "/metrics")
    assert status == 200
    return {key(s.name, **s.labels): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples}


async def infer(worker: ServeProcess) -> int:
    status, _, _ = await request_once(worker.http_port, "POST", "/v2/models/demo/infer", BODY)
    return status


async def start_worker(config: Path, env: dict[str, str]) -> ServeProcess:
    worker = await ServeProcess.start(config, env)
    await wait_until(lambda: _ready(worker), within=60)  # the doors open before models load
    return worker


async def _ready(worker: ServeProcess) -> bool:
    return await worker.ready() == 200


@pytest.fixture
async def metrics_env(tmp_path: Path) -> dict[str, str]:
    return prepare_multiprocess(tmp_path / "metrics")


@pytest.fixture
async def workers(write_config: Callable[..., Path], metrics_env: dict[str, str]
                  ) -> AsyncIterator[list[ServeProcess]]:
    config = write_config()
    started: list[ServeProcess] = []
    try:
        for _ in range(2):
            started.append(await start_worker(config, metrics_env))
        yield started
    finally:
        await asyncio.gather(*(worker.stop() for worker in started))


async def test_either_worker_shows_every_request_and_a_dead_worker_stays_counted(
        workers: list[ServeProcess], write_config: Callable[..., Path],
        metrics_env: dict[str, str]) -> None:
    seen: list[float] = []  # the request count of every scrape, in order

    async def requests(worker: ServeProcess) -> Samples:
        samples = await scrape(worker)
        seen.append(samples.get(key("gateway_requests_total", **DEMO_200), 0.0))
        return samples

    before = await requests(workers[0])
    base = seen[-1]
    assert (await requests(workers[1]))[key("gateway_workers")] == 2
    statuses = await asyncio.gather(*(infer(workers[i % 2]) for i in range(N)))
    assert statuses == [200] * N
    for _ in range(3):
        for worker in workers:
            samples = await requests(worker)
            assert seen[-1] == base + N
            assert samples[key("gateway_request_duration_seconds_count", **DEMO)] == (
                before.get(key("gateway_request_duration_seconds_count", **DEMO), 0) + N)
            assert samples[key("gateway_workers")] == 2

    # A crash: no shutdown, its files stay; its requests stay in the totals, its gauges go.
    await workers[1].stop()
    samples = await requests(workers[0])
    assert seen[-1] == base + N and samples[key("gateway_workers")] == 1
    workers[1] = await start_worker(write_config(), metrics_env)
    statuses = await asyncio.gather(*(infer(workers[1]) for _ in range(10)))
    assert statuses == [200] * 10
    for worker in workers:
        samples = await requests(worker)
        assert seen[-1] == base + N + 10 and samples[key("gateway_workers")] == 2
    assert seen == sorted(seen)  # never backwards


async def test_gauges_are_summed_or_per_worker_and_process_metrics_are_shown(
        workers: list[ServeProcess]) -> None:
    # Idle connections held open on one worker show in a scrape of the other (published
    # within a second), summed with its own (the scrape's connection).
    held = [await asyncio.open_connection("127.0.0.1", workers[1].http_port) for _ in range(5)]

    async def connections_are(count: int) -> bool:
        return (await scrape(workers[0]))[key("gateway_http_connections")] == count

    try:
        await wait_until(lambda: connections_are(6), within=10)
    finally:
        for _, writer in held:
            writer.close()
    await wait_until(lambda: connections_are(1), within=10)

    samples = await scrape(workers[0])
    pids = {str(worker.process.pid) for worker in workers}
    assert samples[key("gateway_batch_queue_depth", model="demo", version="1")] == 0
    assert samples[key("gateway_inflight_requests")] == 0
    # the policy version each worker runs, per worker
    assert {dict(labels)["pid"] for name, labels in samples
            if name == "gateway_policy_version"} == pids
    assert samples[key("process_resident_memory_bytes")] > 0  # the workers' sum
    assert samples[key("process_cpu_seconds_total")] > 0
    assert key("python_gc_collections_total", generation="0") in samples
    assert any(name == "python_info" for name, _ in samples)


def test_prepare_removes_an_old_group_and_an_exit_only_the_gauges(tmp_path: Path) -> None:
    directory = tmp_path / "metrics"
    directory.mkdir()
    for name in ("counter_7.db", "histogram_7.db", "gauge_livesum_7.db"):
        (directory / name).write_bytes(b"")
    env = prepare_multiprocess(directory)
    assert env == {"PROMETHEUS_MULTIPROC_DIR": str(directory.resolve())}
    assert list(directory.iterdir()) == []
    for name in ("counter_8.db", "gauge_livesum_8.db", "gauge_liveall_8.db"):
        (directory / name).write_bytes(b"")
    worker_exited(8, directory)
    assert [path.name for path in directory.iterdir()] == ["counter_8.db"]


def test_whichever_worker_answers_a_scrape_it_counts_every_request(
        two_workers: TwoWorkers) -> None:  # noqa: F811
    def requests() -> float:
        status, body = http("GET", two_workers.base + "/metrics")
        assert status == 200
        return next((s.value for family in text_string_to_metric_families(body.decode())
                     for s in family.samples if s.name == "gateway_requests_total"
                     and s.labels == DEMO_200), 0.0)

    base = requests()
    for _ in range(N):  # a connection each: the kernel spreads them over both workers
        assert http("POST", two_workers.base + "/v2/models/demo/infer", BODY)[0] == 200
    assert {line["worker"] for line in two_workers.served.access_lines()
            if line.get("request") == "POST /v2/models/demo/infer"} == {0, 1}

    def scrape_counts_them() -> None:
        assert requests() == base + N

    two_workers.until_every_worker(lambda line: line.get("request") == "GET /metrics",
                                   scrape_counts_them)
