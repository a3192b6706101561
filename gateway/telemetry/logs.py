"""Logs that point at traces: one JSON access line per request (logger `gateway.access`), and
a text formatter that ends every line logged while a traced request runs with its trace id,
so an error found in the log opens the request's trace."""

from __future__ import annotations

import logging
import time
from typing import Any

from opentelemetry import trace

from gateway.codecs import jsonio

ACCESS = logging.getLogger("gateway.access")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def trace_ids() -> tuple[str, str]:
    """The current span's trace and span id in hex; empty strings outside a traced request."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return "", ""
    return f"{span_context.trace_id:032x}", f"{span_context.span_id:016x}"


def write_access_line(fields: dict[str, Any]) -> None:
    """`fields` as one JSON object, after the time and the trace ids."""
    trace_id, span_id = trace_ids()
    now = time.time()
    line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
            + f".{int(now % 1 * 1000):03d}Z", "trace_id": trace_id, "span_id": span_id,
            **fields}
    ACCESS.info("%s", jsonio.dumps(line).decode(), extra={"access": line})


class TraceFormatter(logging.Formatter):
    """The usual text line, plus ` trace_id=...` when logged for a traced request."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        trace_id, _ = trace_ids()
        return f"{line} trace_id={trace_id}" if trace_id else line


def configure_logging(level: str) -> None:
    """Text lines with trace ids on stderr; access lines as bare JSON (no text prefix), so a
    log shipper can parse them as they are."""
    handler = logging.StreamHandler()
    handler.setFormatter(TraceFormatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    access = logging.StreamHandler()
    access.setFormatter(logging.Formatter("%(message)s"))
    ACCESS.addHandler(access)
    ACCESS.propagate = False
