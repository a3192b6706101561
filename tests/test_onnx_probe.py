"""The load probe: models checked in a child process within memory, CPU and wall-clock limits,
with real ONNX Runtime sessions."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adapters.onnx import probe
from adapters.onnx.probe import LoadLimits, check_model, checks_in_flight
from adapters.onnx.session import ModelLoadError, SessionSettings
from tests.onnx_models import (
    demo_bytes,
    memory_bomb_bytes,
    shape_from_input_bytes,
    slow_warm_up_bytes,
)
from tests.waiting import wait_until

LIMITS = LoadLimits(timeout_s=60, memory_bytes=256 * 1024**2)


def model_file(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    return path


async def test_a_model_within_its_limits_passes_with_its_figures(tmp_path: Path) -> None:
    report = await check_model(model_file(tmp_path, demo_bytes()), SessionSettings(), LIMITS)
    assert 0 < report.seconds < LIMITS.timeout_s
    assert 0 < report.load_rss_bytes < 64 * 1024**2
    assert report.peak_rss_bytes > report.at_rest_rss_bytes


async def test_a_constant_memory_bomb_is_refused_naming_the_process_limit(
        tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as refused:
        await check_model(model_file(tmp_path, memory_bomb_bytes()),
                          SessionSettings(run_memory_bytes=0), LIMITS)
    assert str(refused.value) == (
        "loading and warming up the model on one row needs more than load_memory_bytes = "
        "268435456 bytes (256 MiB)")
    assert time.monotonic() - started < 10  # the allocation fails; nothing is filled


async def test_the_arena_cap_applies_in_the_probe_too(tmp_path: Path) -> None:
    bomb = model_file(tmp_path, memory_bomb_bytes(rows=100_000, cols=4_096))  # 1.6 GB
    with pytest.raises(ModelLoadError, match="more than run_memory_bytes = 67108864 bytes"):
        await check_model(bomb, SessionSettings(run_memory_bytes=64 * 1024**2),
                          LoadLimits(timeout_s=60, memory_bytes=2 * 1024**3))


async def test_a_warm_up_past_the_timeout_is_refused_and_its_process_killed(
        tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as refused:
        await check_model(model_file(tmp_path, slow_warm_up_bytes()), SessionSettings(),
                          LoadLimits(timeout_s=1.5, memory_bytes=256 * 1024**2))
    took = time.monotonic() - started
    assert str(refused.value) == ("loading and warming up the model took longer than "
                                  "load_timeout_s = 1.5 s")
    assert 1.5 <= took < 5
    assert checks_in_flight() == 0  # answered once its process was reaped


async def test_a_cancelled_check_kills_its_process(tmp_path: Path) -> None:
    check = asyncio.create_task(check_model(model_file(tmp_path, slow_warm_up_bytes()),
                                            SessionSettings(), LIMITS))
    await wait_until(lambda: checks_in_flight() == 1)
    check.cancel()
    with pytest.raises(asyncio.CancelledError):
        await check
    await wait_until(lambda: checks_in_flight() == 0)  # killed and reaped


async def test_an_unloadable_file_is_refused_without_naming_where_it_lies(
        tmp_path: Path) -> None:
    path = model_file(tmp_path, b"\x08\x01garbage")
    with pytest.raises(ModelLoadError) as refused:
        await check_model(path, SessionSettings(), LIMITS)
    assert str(refused.value).startswith("not a loadable ONNX model")
    assert str(tmp_path) not in str(refused.value)


async def test_a_model_whose_cost_depends_on_its_input_passes_the_warm_up(
        tmp_path: Path) -> None:
    """A zero row allocates nothing here: per-call cost is the arena cap's to bound (see
    tests/test_rest_management.py)."""
    report = await check_model(model_file(tmp_path, shape_from_input_bytes()),
                               SessionSettings(run_memory_bytes=64 * 1024**2), LIMITS)
    assert report.load_rss_bytes < 64 * 1024**2


async def test_a_check_server_that_died_is_replaced(tmp_path: Path) -> None:
    path = model_file(tmp_path, demo_bytes())
    await check_model(path, SessionSettings(), LIMITS)
    server = probe._CheckServer.current
    assert server is not None
    server._process.kill()
    await wait_until(lambda: server._process.poll() is not None)
    await check_model(path, SessionSettings(), LIMITS)
    assert probe._CheckServer.current is not server


def test_the_check_server_imports_onnx_runtime_without_the_adapter() -> None:
    """The check server (and every check forked from it) holds `adapters.onnx.session` and
    what it needs, not the batcher, metrics or tracing: a smaller process to fork."""
    root = Path(__file__).parents[1]
    code = ("import sys; import adapters.onnx.probe; "
            "print(sorted(m for m in sys.modules if m.startswith(('adapters', 'gateway', "
            "'opentelemetry', 'prometheus'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    assert out.stdout.strip() == str(sorted([
        "adapters", "adapters.onnx", "adapters.onnx.probe", "adapters.onnx.session",
        "gateway", "gateway.dtypes", "gateway.errors", "gateway.types"]))
