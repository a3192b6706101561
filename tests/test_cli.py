"""`gateway serve` as a user runs it: a real process on a free port, stopped by SIGTERM."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as reply:
            return reply.status == 200
    except urllib.error.HTTPError:
        return False


def test_serve_answers_then_stops_cleanly_on_sigterm() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(ROOT / "gateway.toml"),
         "--http-port", "0"], stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        port = None
        for line in process.stderr:  # wait on the log line, not on a timer
            match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            if match:
                port = int(match.group(1))
                break
        assert port, "gateway did not report its port"
        ready_by = time.monotonic() + 30  # the doors open before the models have loaded
        while not ready(port):
            assert time.monotonic() < ready_by, "gateway never became ready"
            time.sleep(0.01)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/models/demo:predict", method="POST",
            data=json.dumps({"instances": [[1, 2, 3, 4]]}).encode())
        with urllib.request.urlopen(request, timeout=10) as reply:
            predictions = json.load(reply)["predictions"]
        assert len(predictions) == 1 and abs(sum(predictions[0]) - 1) < 1e-5
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as reply:
            assert reply.status == 200
    finally:
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=15)  # drains and closes stderr
        assert process.returncode == 0, rest
        assert "shutting down" in rest
