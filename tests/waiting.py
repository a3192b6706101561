"""Waiting on a condition instead of sleeping a fixed time."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any


async def wait_until(condition: Callable[[], bool | Awaitable[bool]],
                     within: float = 10.0) -> None:
    """Poll `condition` (plain or async) until it holds; fail after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(0.005)


async def models_loaded(gateway: Any) -> None:
    """Wait until every in-process model of the first repository scan has loaded (or failed):
    a gateway serves while they load, and tests want them served."""
    from adapters.onnx.adapter import OnnxAdapter

    for adapter in gateway.adapters.values():
        if isinstance(adapter, OnnxAdapter):
            await adapter.startup_settled()
