"""One view of the metrics of a group of worker processes (`gateway serve --workers N`): every
worker writes its values into prometheus_client's multiprocess files, and any worker's
`/metrics` merges the files of all of them (docs/observability.md, "Several workers").

The switch is prometheus_client's own: `PROMETHEUS_MULTIPROC_DIR` in a worker's environment
when it starts (the library picks where values live when it is imported, once per process).
Without it a gateway keeps its values in its own registry, so tests can build many gateways in
one process. The supervisor's part is two calls:

    env = prepare_multiprocess(directory)   # once, before the first worker starts
    ...start each worker as a new interpreter with os.environ | env...
    worker_exited(pid, directory)           # after reaping any worker, whatever the reason

Counters and histograms are summed over every worker that ever ran in the group (a dead
worker's file stays, so totals never drop); gauges of live workers are summed or shown per
worker (`pid` label) as each means; state a worker reads rather than counts (queue depths,
breakers, `process_*`) is published into its files every `PUBLISH_INTERVAL_S`."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, values
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

#: the environment variable that puts a process in multiprocess mode, and names the directory
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: how old another worker's published state (queue depths, breakers, process_*) may be
PUBLISH_INTERVAL_S = 1.0

#: How each gauge a worker publishes merges over the live workers; any other is per worker
#: (`liveall`: a `pid` label). A dead worker's queue, connections and memory are gone, so
#: every mode is a live one: `worker_exited` drops the dead worker's values.
GaugeMode = Literal["livesum", "livemin", "livemax", "liveall"]
GAUGE_MODES: dict[str, GaugeMode] = {
    "gateway_batch_queue_depth": "livesum",
    "gateway_inflight_requests": "livesum",
    "gateway_http_connections": "livesum",
    "process_resident_memory_bytes": "livesum",
    "process_virtual_memory_bytes": "livesum",
    "process_open_fds": "livesum",
    "process_max_fds": "livemin",
    # the youngest worker's start: a worker restart moves it, as restarting a process does
    "process_start_time_seconds": "livemax",
}
PER_WORKER: GaugeMode = "liveall"

Labels = tuple[tuple[str, str], ...]


def multiprocess_directory() -> Path | None:
    """The group's shared directory when this process is one of its workers, else None."""
    directory = os.environ.get(MULTIPROCESS_ENV)
    if bool(directory) != bool(getattr(values.ValueClass, "_multiprocess", False)):
        raise RuntimeError(
            f"{MULTIPROCESS_ENV} was set or unset after prometheus_client was imported; "
            "start each worker as a new interpreter with the variable in its environment")
    return Path(directory) if directory else None


def prepare_multiprocess(directory: str | os.PathLike[str]) -> dict[str, str]:
    """Make `directory` ready for a new group of workers: create it, remove the files of any
    previous group (their counts would be added to this one's), and return the environment
    every worker must start with. Never call it while workers that write there run."""
    path = Path(directory).resolve()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()
    return {MULTIPROCESS_ENV: str(path)}


def worker_exited(pid: int, directory: str | os.PathLike[str]) -> None:
    """Drop the gauges of a worker that has exited (its counters and histograms stay in the
    totals). Scrapes also drop those of workers found dead, so this is prompt, not vital."""
    mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]


def reap_dead_workers(directory: Path) -> None:
    pids = {int(path.stem.rsplit("_", 1)[1]) for path in directory.glob("gauge_live*_*.db")}
    for pid in pids:
        if not _alive(pid):
            worker_exited(pid, directory)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: the pid was reused, not ours to judge
        return True
    return True


class StatePublisher:
    """Copies what `sources` read in this worker (scrape-time state, `process_*`,
    `python_gc_*`) into its multiprocess files: a gauge is set (mode from `GAUGE_MODES`), a
    counter is raised by what it rose since the last time."""

    def __init__(self, sources: CollectorRegistry) -> None:
        self._sources = sources
        self._gauges: dict[str, Gauge] = {}
        self._counters: dict[str, Counter] = {}
        self._counted: dict[tuple[str, Labels], float] = {}
        self._shown: dict[str, set[Labels]] = {}

    def publish(self) -> None:
        for family in self._sources.collect():
            if family.type == "counter":
                self._count(family)
            elif family.type == "gauge":
                self._set(family)

    def _count(self, family: Metric) -> None:
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            labels = tuple(sorted(sample.labels.items()))
            rise = sample.value - self._counted.get((family.name, labels), 0.0)
            if rise > 0:
                counter = self._counters.get(family.name)
                if counter is None:
                    counter = self._counters[family.name] = Counter(
                        family.name, family.documentation, list(sample.labels), registry=None)
                (counter.labels(**sample.labels) if sample.labels else counter).inc(rise)
                self._counted[(family.name, labels)] = sample.value

    def _set(self, family: Metric) -> None:
        shown: set[Labels] = set()
        for sample in family.samples:
            gauge = self._gauges.get(family.name)
            if gauge is None:
                gauge = self._gauges[family.name] = Gauge(
                    family.name, family.documentation, list(sample.labels), registry=None,
                    multiprocess_mode=GAUGE_MODES.get(family.name, PER_WORKER))
            (gauge.labels(**sample.labels) if sample.labels else gauge).set(sample.value)
            shown.add(tuple(sorted(sample.labels.items())))
        # a series this worker no longer has (a model version unloaded) reads 0, not its last
        for labels in self._shown.get(family.name, set()) - shown:
            gauge = self._gauges[family.name]
            (gauge.labels(**dict(labels)) if labels else gauge).set(0)
        self._shown[family.name] = shown


class GroupCollector(Collector):
    """What a worker's `/metrics` shows: this worker's state published afresh, workers found
    dead dropped, then every worker's files merged."""

    def __init__(self, directory: Path, publish: Callable[[], None]) -> None:
        self._directory = directory
        self._publish = publish

    def collect(self) -> Iterable[Metric]:
        self._publish()
        reap_dead_workers(self._directory)
        files = [str(path) for path in self._directory.glob("*.db")]
        merged: Iterable[Metric] = MultiProcessCollector.merge(  # type: ignore[no-untyped-call]
            files, accumulate=True)
        return merged
