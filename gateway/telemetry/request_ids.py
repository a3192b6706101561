"""Request ids: the caller's `X-Request-Id` (HTTP header or gRPC metadata) when it is a safe one,
else a new one. The front door echoes it in the reply and binds it to the request's context,
where the backend calls (`propagation`), the access line and every log line find it."""

from __future__ import annotations

import os
from contextvars import ContextVar, Token
from typing import Final

HEADER: Final = "X-Request-Id"
#: gRPC metadata keys are lower case; HTTP headers are not case-sensitive, so backends of
#: either kind get this spelling.
METADATA_KEY: Final = "x-request-id"
MAX_LENGTH: Final = 128
_CURRENT: ContextVar[str] = ContextVar("gateway_request_id", default="")


def new_request_id() -> str:
    """32 random hex digits, as a uuid4's hex (without its version bits): about 1 µs, where
    `uuid.uuid4().hex` costs several."""
    return os.urandom(16).hex()


def accept(offered: str | None) -> str:
    """`offered` if it is 1 to 128 printable ASCII characters, which a reply header, gRPC
    metadata and a log line carry back unchanged; else a new id, so a caller's arbitrary bytes
    are never echoed or logged."""
    if offered and len(offered) <= MAX_LENGTH and offered.isascii() and offered.isprintable():
        return offered
    return new_request_id()


def bind(request_id: str) -> Token[str]:
    """The request this task (and the tasks it starts) serves is `request_id`."""
    return _CURRENT.set(request_id)


def unbind(token: Token[str]) -> None:
    _CURRENT.reset(token)


def current() -> str:
    """The id of the request this code runs for; "" outside a request."""
    return _CURRENT.get()
