"""What several bench scripts share: the demo gateway config and the report's formatting."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

#: The embedded demo model served in-process, quiet: no access log, no repository rescans.
DEMO_CONFIG = f"""\
[server]
host = "127.0.0.1"
grpc_port = 0             # a free port: gateways started side by side never clash
access_log = false
log_level = "warning"

[adapters.local]
kind = "onnx"
repository = "{ROOT / 'models'}"
poll_interval_s = 3600.0

[models.demo]
adapter = "local"
"""


def process_tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) so far of `pid` and every live process below it (a
    supervisor's workers and their children), from /proc."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # fields after the ")" that ends the command name: ppid is 4th, utime/stime 14/15
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        child = int(stat.parent.name)
        parents[child] = int(fields[1])
        times[child] = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [c for c, p in parents.items() if p == parent and c not in tree]
        tree.update(children)
        frontier += children
    return sum(times.get(p, 0.0) for p in tree)


def fmt(value: float | None, spec: str, empty: str = "-") -> str:
    return empty if value is None else format(value, spec)


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def markdown_table(head: list[str], rows: list[list[str]]) -> list[str]:
    """Aligned markdown lines: the first column left, the others right-aligned."""
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths, strict=True))) + " |"

    rule = "|" + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":"
                          for i, w in enumerate(widths)) + "|"
    return [line(head), rule, *(line(r) for r in rows)]


def missing_parts(tools: Iterable[str], server: Callable[[], None]) -> list[str]:
    """What a bench needs and this machine lacks: `tools` not on PATH, and what `server` (a
    test helper's `require_*`, which fails as a test would) says is not installed."""
    missing = [f"{tool} is not installed" for tool in tools if not shutil.which(tool)]
    try:
        server()
    except pytest.fail.Exception as exc:
        missing.append(str(exc))
    return missing
