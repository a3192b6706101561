"""The internal request, reply and model descriptions every front end and adapter share."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway.dtypes import DType

Tensors = dict[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A model input or output: name, element type, and shape with -1 for dynamic dims."""

    name: str
    dtype: DType
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    name: str
    version: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def input(self, name: str) -> TensorSpec | None:
        return next((s for s in self.inputs if s.name == name), None)


@dataclass(frozen=True, slots=True)
class VersionStatus:
    """One version's lifecycle state, named as TF Serving names them."""

    version: str
    state: str  # START, LOADING, AVAILABLE, UNLOADING, END
    error: str = ""


@dataclass(frozen=True, slots=True)
class ModelRef:
    """Which model a client asked for: a version or a label (or neither: the default), and
    for TF Serving backends which signature."""

    model: str
    version: str | None = None
    label: str | None = None
    signature: str | None = None


@dataclass(slots=True)
class Principal:
    """Who is calling, after authentication. Anonymous when auth is off."""

    subject: str = "anonymous"
    claims: Mapping[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class RequestContext:
    """Facts about the call that travel with it: headers, deadline, caller, front door."""

    frontend: str
    headers: Mapping[str, str]
    deadline: float  # time.monotonic() seconds
    #: The caller's `X-Request-Id` or one made for it (`gateway.telemetry.request_ids`).
    request_id: str = ""
    #: The subject (RFC 4514) of the client certificate the door verified under mTLS
    #: (`[server.tls] client_ca_file`); None otherwise. Set by every door (gateway.tls.subject).
    tls_subject: str | None = None
    principal: Principal = field(default_factory=Principal)
    #: The client's address: the peer's, or with `[server] trusted_proxies` the right-most
    #: untrusted `X-Forwarded-For` hop (`gateway.client_address`); "" when unknown.
    client_address: str = ""
    #: Set once `principal` is verified: doors authenticate before they read a body, and the
    #: pipeline does not do it twice.
    authenticated: bool = False
    #: Set by pipeline steps (rate-limit state, the variant taken); every front end sends
    #: them with the reply, errors included.
    reply_headers: dict[str, str] = field(default_factory=dict)
    #: What answered, set by the pipeline: for the request metrics and the access log.
    version: str = ""
    variant: str = ""

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


#: Turns a request body into tensors once the target model's signature is known (TF Serving's
#: JSON carries no dtypes: they come from the signature).
InputDecoder = Callable[[ModelMetadata], Tensors]


@dataclass(slots=True)
class InferRequest:
    ref: ModelRef
    context: RequestContext
    inputs: Tensors = field(default_factory=dict)
    decoder: InputDecoder | None = None
    outputs: tuple[str, ...] | None = None  # requested outputs; None means all
    parameters: Mapping[str, Any] = field(default_factory=dict)
    id: str | None = None
    #: The client's own bytes and media type, for backends that take them as they are
    #: (TorchServe handlers); a front end that sets them sets `decoder` for all the others.
    body: bytes | None = None
    content_type: str = ""
    #: The client's headers such a backend hands its handler (the door chooses which), and
    #: whether the client asked for an explanation rather than a prediction (TorchServe's
    #: `/explanations`).
    headers: Mapping[str, str] = field(default_factory=dict)
    explain: bool = False
    #: A large body's `decoder` runs in a worker thread, so it cannot hold the event loop.
    decode_off_loop: bool = False


@dataclass(slots=True)
class InferResponse:
    model: str
    version: str
    outputs: Tensors
    variant: str | None = None
    id: str | None = None
    #: A body-passing backend's own reply to a request that carried `body`, in place of
    #: `outputs`; `chunks` are the parts that follow when it streams, relayed as they come.
    body: bytes | None = None
    content_type: str | None = None  # None: the backend sent none
    chunks: AsyncGenerator[bytes, None] | None = None
    #: The HTTP status and headers such a backend answered with (its handler may choose them).
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
