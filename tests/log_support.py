"""What a test asks of the log: that nothing went wrong along the way."""

from __future__ import annotations

import logging

import pytest


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """Records at ERROR or above, or carrying a traceback."""
    return [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
