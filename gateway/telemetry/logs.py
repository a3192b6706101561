"""Logs that point at requests and traces: one JSON access line per request (logger
`gateway.access`), and application lines as JSON objects of the same shape (or as text) that
carry the request id and trace id of the request they were logged for, so an error found in
the log opens the request's access line and trace."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from opentelemetry import trace

from gateway.codecs import jsonio
from gateway.telemetry import request_ids

ACCESS = logging.getLogger("gateway.access")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_process_fields: dict[str, Any] = {}  # what every JSON line of this process carries


def trace_ids() -> tuple[str, str]:
    """The current span's trace and span id in hex; empty strings outside a traced request."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return "", ""
    return f"{span_context.trace_id:032x}", f"{span_context.span_id:016x}"


def write_access_line(fields: dict[str, Any]) -> None:
    """`fields` as one JSON object, after the time and the trace ids."""
    trace_id, span_id = trace_ids()
    line = {"time": timestamp(time.time()), "trace_id": trace_id, "span_id": span_id,
            **_process_fields, **fields}
    ACCESS.info("%s", jsonio.dumps(line).decode(), extra={"access": line})


def timestamp(seconds: float) -> str:
    """UTC, ISO 8601 to the millisecond: `2026-11-22T01:12:18.639Z`."""
    return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
            + f".{int(seconds % 1 * 1000):03d}Z")


class JsonFormatter(logging.Formatter):
    """An application line as one JSON object, shaped like the access line: time, level,
    logger, message; the request id and trace ids when logged for a request; the worker; the
    traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {"time": timestamp(record.created), "level": record.levelname,
                                "logger": record.name, "message": record.getMessage()}
        trace_id, span_id = trace_ids()
        if trace_id:
            line["trace_id"], line["span_id"] = trace_id, span_id
        request_id = request_ids.current()
        if request_id:
            line["request_id"] = request_id
        line.update(_process_fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return jsonio.dumps(line).decode()


class TraceFormatter(logging.Formatter):
    """The usual text line, plus ` request_id=...` and ` trace_id=...` when logged for a
    request (a traced one)."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = request_ids.current()
        if request_id:
            line = f"{line} request_id={request_id}"
        trace_id, _ = trace_ids()
        return f"{line} trace_id={trace_id}" if trace_id else line


def configure_logging(level: str, worker: int | None = None, log_format: str = "json") -> None:
    """Application lines on stderr as JSON objects (`log_format` "json") or text; access lines
    always bare JSON (no text prefix), so a log shipper parses every line as it is. A worker
    of `gateway serve --workers N` says which it is: `"worker": I` on JSON lines, `worker I
    pid P` on text lines."""
    text_format = TEXT_FORMAT
    if worker is not None:
        text_format = text_format.replace("%(name)s", f"worker {worker} pid {os.getpid()} "
                                          "%(name)s", 1)
        _process_fields["worker"] = worker
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TraceFormatter(text_format))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    access = logging.StreamHandler()
    access.setFormatter(logging.Formatter("%(message)s"))
    ACCESS.addHandler(access)
    ACCESS.propagate = False
