"""The HTTP side of a drain (`gateway.drain`): each request counts as in flight while its
handler runs, one the drain cuts short answers 503, and once the listener stopped accepting
every reply carries `Connection: close`, so keep-alive clients reconnect elsewhere after it."""

from __future__ import annotations

import asyncio

from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware

from gateway.drain import CUT_SHORT, Drain
from gateway.errors import ShuttingDown
from gateway.rest.errors import Handler

_PREPARED = web.RequestKey("reply_prepared", bool)  # its head went out: no 503 possible


def drain_guard(drain: Drain) -> Middleware:
    """Inside `errors_and_metrics`, which renders and records the 503."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        task = drain.enter()
        try:
            return await handler(request)
        except asyncio.CancelledError:
            if request.get(_PREPARED) or not drain.was_cut():
                raise
            raise ShuttingDown(CUT_SHORT, retry_after_s=1) from None
        finally:
            drain.leave(task)

    return guard


def on_reply_head(request: web.Request, response: web.StreamResponse, drain: Drain) -> None:
    """Called as a reply's head is prepared (`gateway.rest.server.reply_head`)."""
    request[_PREPARED] = True
    if drain.closing:
        # aiohttp computed the head's Connection header before this hook: set it too
        response.force_close()
        response.headers[hdrs.CONNECTION] = "close"
