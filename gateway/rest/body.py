"""Reading a request body within a limit, inflating `Content-Encoding: gzip | deflate` a
bounded step at a time as the bytes are read: the limit counts inflated bytes, and the event
loop gets a turn between steps, so a small compressed body cannot expand into gigabytes or
seconds of loop time."""

from __future__ import annotations

import asyncio
import zlib

from aiohttp import web

from gateway.errors import BadRequest, PayloadTooLarge, UnsupportedEncoding

#: Inflated bytes per step; between steps the loop may run (one step is ~1 ms of zlib).
STEP_BYTES = 1024 * 1024
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS,
          "deflate": zlib.MAX_WBITS}


async def read_limited(request: web.Request, limit: int, what: str) -> bytes:
    """The body, inflated; `PayloadTooLarge` naming `[server] {what}` past `limit` bytes."""
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("identity", "", *_WBITS):
        raise UnsupportedEncoding(f"Content-Encoding {encoding[:32]!r} is not accepted; send "
                                  "gzip, deflate or identity")
    if encoding in ("identity", "") and request.content_length is not None and \
            request.content_length > limit:
        raise PayloadTooLarge(f"request body of {request.content_length} bytes exceeds the "
                              f"limit of {limit} bytes ([server] {what})")
    inflate = zlib.decompressobj(_WBITS[encoding]) if encoding in _WBITS else None
    body = bytearray()
    since_yield = 0
    async for chunk in request.content.iter_any():
        pending = chunk
        while pending:
            if inflate is None:
                piece, pending = pending, b""
            else:
                try:
                    piece = inflate.decompress(pending, STEP_BYTES)
                except zlib.error:
                    raise BadRequest(f"the {encoding} body could not be inflated") from None
                pending = inflate.unconsumed_tail
            body += piece
            if len(body) > limit:
                raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes "
                                      f"([server] {what}), counted after decompression")
            since_yield += len(piece)
            if since_yield >= STEP_BYTES:
                since_yield = 0
                await asyncio.sleep(0)
    if inflate is not None and not inflate.eof:
        raise BadRequest(f"the {encoding} body ends before its compressed stream does")
    return bytes(body)
