"""What several bench scripts share: the demo gateway config and the report's formatting."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

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
