"""What the test process costs (Linux /proc): its resident memory, sampled while a test runs."""

from __future__ import annotations

import os
import threading
from types import TracebackType

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


class PeakRss:
    """`with PeakRss() as peak:` samples this process's resident memory every millisecond
    from a thread of its own (so a busy event loop or a running batch is measured too);
    `peak.rise` is the most it went above where it started."""

    def __init__(self) -> None:
        self.start = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @property
    def rise(self) -> int:
        return self.peak - self.start

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, rss_bytes())
