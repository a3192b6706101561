"""The HTTP side of a drain (`gateway.drain`): each request counts as in flight while its
handler runs (`gateway.rest.errors.answered` enters and leaves it), one the drain cuts short
answers 503, and once the listener stopped accepting every reply carries `Connection: close`,
so keep-alive clients reconnect elsewhere after it."""

from __future__ import annotations

from aiohttp import hdrs, web

from gateway.drain import Drain

_PREPARED = web.RequestKey("reply_prepared", bool)  # its head went out: no 503 possible


def cut_short(request: web.Request, drain: Drain) -> bool:
    """For an `except asyncio.CancelledError` around a handler: whether the drain cut it
    short, and it can still answer 503 (its reply's head has not gone out)."""
    return not request.get(_PREPARED) and drain.was_cut()


def on_reply_head(request: web.Request, response: web.StreamResponse, drain: Drain) -> None:
    """Called as a reply's head is prepared (`gateway.rest.server.reply_head`)."""
    request[_PREPARED] = True
    if drain.closing:
        # aiohttp computed the head's Connection header before this hook: set it too
        response.force_close()
        response.headers[hdrs.CONNECTION] = "close"
