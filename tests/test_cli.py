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

import gateway

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
         "--http-port", "0", "--grpc-port", "0"], stderr=subprocess.PIPE, text=True)
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


def test_version_and_help() -> None:
    run = subprocess.run([sys.executable, "-m", "gateway", "--version"], capture_output=True,
                         text=True, timeout=60)
    assert (run.returncode, run.stdout) == (0, f"gateway {gateway.__version__}\n")
    run = subprocess.run([sys.executable, "-m", "gateway", "serve", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert "--config FILE" in run.stdout and "docs/configuration.md" in run.stdout


def test_serve_warns_of_a_label_without_its_version_and_serves(tmp_path: Path) -> None:
    """check-config fails on it (tests/test_config.py); serve only warns: the repository is
    live data, and a restart must not crash-loop on a version still being copied in."""
    config = tmp_path / "gateway.toml"
    config.write_text(f'[adapters.local]\nkind = "onnx"\nrepository = "{ROOT / "models"}"\n'
                      '[models.demo]\nadapter = "local"\nlabels = { stable = 1, next = 2 }\n')
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--http-port", "0",
         "--grpc-port", "0"], stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        lines = []
        for line in process.stderr:
            lines.append(line)
            match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            if match:
                break
        warning = f"{config}:6: models.demo.labels.next: version 2 is not in the repository"
        assert any(warning in line for line in lines), lines
        assert match, lines
        ready_by = time.monotonic() + 30
        while not ready(int(match.group(1))):  # and it serves
            assert time.monotonic() < ready_by, "gateway never became ready"
            time.sleep(0.01)
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=15)
    assert process.returncode == 0
