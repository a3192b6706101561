"""Decoding whose cost is per-element Python work (BYTES elements become `bytes` objects one by
one) leaves the event loop when a request has enough of it to hold the loop for milliseconds."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")

#: Per-element work done inline: ~100-400 ns an element, so at most ~10 ms of loop time. More
#: goes to a worker thread, where the interpreter's switch interval (5 ms) lets the loop run.
INLINE_ELEMENTS = 32_768


async def run(decode: Callable[[], T], *, per_element_work: int) -> T:
    """`decode()` inline when it is cheap, else in the loop's default executor; the thread hop
    costs ~50 µs, which only requests with thousands of strings pay."""
    if per_element_work <= INLINE_ELEMENTS:
        return decode()
    return await asyncio.to_thread(decode)


#: Elements one C call handles at a time in worker threads: a single call over millions of them
#: would hold the GIL, and so the event loop, for tens of ms (~50 ns an element).
CHUNK = 65_536


def object_array(values: Sequence[Any]) -> np.ndarray:
    """A 1-D object array of `values` (a list or a protobuf repeated field), filled a chunk at
    a time so a worker thread gives the GIL back to the loop between chunks."""
    array = np.empty(len(values), dtype=object)
    for start in range(0, len(values), CHUNK):
        array[start:start + CHUNK] = values[start:start + CHUNK]
    return array
