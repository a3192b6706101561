"""One ONNX Runtime session: its arena capped per model version, and memory a large batch
took handed back to the system."""

from __future__ import annotations

import numpy as np
import pytest

from adapters.onnx.session import OutOfMemory, SessionSettings, load_session
from gateway.errors import PayloadTooLarge
from tests.onnx_models import memory_bomb_bytes, shape_from_input_bytes
from tests.processes import PeakRss, rss_bytes

MiB = 1024**2


def sized(rows: int, cols: int) -> dict[str, np.ndarray]:
    """The input that makes `shape_from_input_bytes` allocate [rows, cols] floats."""
    return {"x": np.array([[rows, cols]], np.float32)}


def test_a_batch_over_the_arena_cap_is_refused_and_the_session_serves_on() -> None:
    session = load_session(shape_from_input_bytes(), SessionSettings(run_memory_bytes=64 * MiB))
    with PeakRss() as rss, pytest.raises(PayloadTooLarge) as refused:
        session.run(sized(20_000, 4_096))  # 328 MB
    assert refused.value.message == ("running this batch needs more than the model's "
                                     "run_memory_bytes = 67108864 bytes of ONNX Runtime memory")
    assert rss.rise < 20 * MiB
    assert session.run(sized(1_000, 1_000))["y"].tolist() == [[1_001_000.0, 1_001_000.0]]


def test_memory_a_large_batch_took_goes_back_to_the_system() -> None:
    session = load_session(shape_from_input_bytes(), SessionSettings(run_memory_bytes=MiB**2))
    before = rss_bytes()
    with PeakRss() as rss:
        session.run(sized(40_000, 1_024))  # 160 MB
    assert rss.rise > 100 * MiB
    assert rss_bytes() - before < 20 * MiB


def test_a_warm_up_over_the_arena_cap_says_so() -> None:
    with pytest.raises(OutOfMemory) as refused:
        load_session(memory_bomb_bytes(), SessionSettings(run_memory_bytes=64 * MiB))
    assert refused.value.arena


def test_sessions_without_a_cap_use_onnx_runtime_s_own_arena() -> None:
    session = load_session(shape_from_input_bytes(), SessionSettings(run_memory_bytes=0))
    assert session.shrink is None and session.run_memory_bytes == 0
    assert session.run(sized(10, 10))["y"].tolist() == [[110.0, 110.0]]
