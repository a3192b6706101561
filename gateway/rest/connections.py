"""The HTTP listener's connection hygiene, below the application: a cap on open connections,
a deadline for sending a request's headers (slowloris), an idle keep-alive timeout, and request
line and header limits answered as JSON 414/431/400 that never echo the client's bytes. With
`[server.tls]` each accepted connection is wrapped in TLS (`gateway.tls`) before aiohttp sees it.

aiohttp has no header-read timeout and answers parser errors in text/plain with the offending
bytes quoted, so the listener uses its own `RequestHandler` subclass and site. Connections are
accepted by a thread of their own (`AcceptThread`): uvloop takes about one connection from the
accept queue per loop iteration, so under load new connections (health probes among them)
waited seconds before a byte of theirs was read.

For a drain (`gateway.shutdown`), closing the listener still takes the connections the kernel
had already completed, and `close_idle_connections` closes only those waiting for a request of
which no byte has arrived; the others close after their reply (`gateway.rest.draining`).
"""

from __future__ import annotations

import array
import asyncio
import fcntl
import logging
import os
import select
import socket
import ssl
import termios
import threading
from collections.abc import Callable
from typing import Any

from aiohttp import hdrs, web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from gateway.codecs import jsonio
from gateway.config import ServerConfig
from gateway.rest.server import SERVER_NAME
from gateway.tls.listeners import HttpsContexts

log = logging.getLogger(__name__)
LINGERING_S = 2.0

#: How long `runner.cleanup()` waits for a request still in progress before it cancels it:
#: the drain (gateway.shutdown) has waited for requests already; this is what it left over.
CLEANUP_TIMEOUT_S = 1.0

#: Counts a connection-level refusal by reason (`connection_limit`, `header_timeout`,
#: `request_line_too_long`, `headers_too_large`, `bad_request`).
Refused = Callable[[str], None]


class GuardedRequestHandler(RequestHandler):
    """aiohttp's per-connection protocol with the gateway's limits."""

    def __init__(self, manager: web.Server, *, config: ServerConfig, refused: Refused,
                 **kwargs: Any) -> None:
        super().__init__(manager, keepalive_timeout=config.keepalive_timeout_s,
                         max_line_size=config.max_request_line_bytes,
                         max_field_size=config.max_header_bytes,
                         max_headers=config.max_headers,
                         # After a reply to a request whose body was not read, what the client
                         # still sends is read and dropped for up to this long, so that closing
                         # does not reset the connection under the reply (nginx's lingering
                         # close). Bodies reach the app compressed (`auto_decompress` is off
                         # in gateway.rest.server), so this costs no inflation.
                         lingering_time=LINGERING_S, **kwargs)
        self._config = config
        self._refused = refused
        self._header_timer: asyncio.TimerHandle | None = None
        self._partial = False  # bytes of a request whose headers have not all arrived

    @property
    def idle(self) -> bool:
        """Between requests, with no byte of the next one received or unread in the socket:
        closing the connection now loses nothing the client sent."""
        return (self._waiting_for_request() and not self._partial
                and _unread_bytes(self.transport) == 0)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        manager = self._manager
        if manager is not None and len(manager.connections) > self._config.max_connections:
            self._refused("connection_limit")
            self.force_close()  # closes the transport
            return
        self._arm_header_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        seen = self._request_count
        super().data_received(data)
        if self._request_count != seen:
            self._partial = False
            self._disarm_header_timer()
        elif data:
            self._partial = True
            if self._header_timer is None and self._waiting_for_request():
                self._arm_header_timer()  # the start of the next request, kept-alive

    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> StreamResponse:
        if not isinstance(exc, BadHttpMessage):
            response = super().handle_error(request, status, exc, message)
            response.headers[hdrs.SERVER] = SERVER_NAME  # no app hook runs for these
            return response
        status, reason, text = _parser_refusal(exc, self._config)
        self._refused(reason)
        response = web.Response(status=status, body=jsonio.dumps({"error": text}),
                                content_type="application/json",
                                headers={hdrs.SERVER: SERVER_NAME})
        response.force_close()
        return response

    def _waiting_for_request(self) -> bool:
        waiter = self._waiter
        return waiter is not None and not waiter.done()

    def _arm_header_timer(self) -> None:
        self._header_timer = self._loop.call_later(self._config.header_timeout_s,
                                                   self._header_timeout, self._request_count)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self, seen: int) -> None:
        self._header_timer = None
        if self._request_count == seen and self.transport is not None:
            # Only a connection that sent part of a request (or nothing, since it opened):
            # idle kept-alive connections are the keep-alive timeout's to close.
            self._refused("header_timeout")
            self.force_close()  # closes the transport


def _parser_refusal(exc: BadHttpMessage, config: ServerConfig) -> tuple[int, str, str]:
    """Status, metric reason and message for a request the parser refused; fixed texts only."""
    if isinstance(exc, LineTooLong):
        line = exc.args[0] if exc.args else b""
        if isinstance(line, str):
            line = line.encode("latin-1", "replace")
        if bytes(line[:4]).lower().startswith((b"/", b"http", b"*")):
            return (414, "request_line_too_long", "request line exceeds "
                    f"{config.max_request_line_bytes} bytes ([server] max_request_line_bytes)")
        return (431, "headers_too_large", "a header field exceeds "
                f"{config.max_header_bytes} bytes ([server] max_header_bytes)")
    if "Too many headers" in exc.message:
        return (431, "headers_too_large",
                f"more than {config.max_headers} header fields ([server] max_headers)")
    return 400, "bad_request", "malformed HTTP request"


class GuardedSite(web.BaseSite):
    """A TCP listener whose connections use `GuardedRequestHandler`."""

    def __init__(self, runner: web.AppRunner, config: ServerConfig, refused: Refused) -> None:
        super().__init__(runner)
        self._config = config
        self._refused = refused

    @property
    def name(self) -> str:
        scheme = "http" if self._config.tls is None else "https"
        return f"{scheme}://{self._config.host}:{self._config.http_port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None, "the runner is set up first"
        manager: web.Server = server

        def protocol() -> GuardedRequestHandler:
            # the manager's own kwargs: access log and debug settings of the runner
            return GuardedRequestHandler(manager, config=self._config, refused=self._refused,
                                         loop=asyncio.get_running_loop(), **manager._kwargs)

        listener = socket.create_server((self._config.host, self._config.http_port),
                                        family=_family(self._config.host), backlog=1024,
                                        reuse_port=True)
        tls = None if self._config.tls is None else HttpsContexts(self._config.tls)
        acceptor = AcceptThread(listener, asyncio.get_running_loop(), protocol, tls,
                                self._config.header_timeout_s, self._refused)
        acceptor.start()
        self._server = acceptor  # type: ignore[assignment]  # what BaseSite.stop() closes

    def addresses(self) -> list[tuple[str, int]]:
        server = self._server
        return [sock.getsockname()[:2] for sock in getattr(server, "sockets", ())]


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class AcceptThread:
    """Accepts connections in a thread (the GIL is released while it waits in epoll) and hands
    each to the event loop, which may take hundreds in one iteration.

    The listener is non-blocking and watched with `EPOLLEXCLUSIVE`, so processes sharing one
    listening socket are not all woken for each connection; a pipe wakes the thread to stop.
    With `tls`, the loop runs each connection's TLS handshake (within `handshake_timeout_s`,
    the header deadline) before the protocol sees a byte; a failed one counts as refused
    (`tls_handshake`: no or an untrusted client certificate under mTLS, a plaintext client,
    a stall).
    """

    def __init__(self, listener: socket.socket, loop: asyncio.AbstractEventLoop,
                 protocol: Callable[[], asyncio.Protocol], tls: HttpsContexts | None = None,
                 handshake_timeout_s: float = 10.0, refused: Refused | None = None) -> None:
        listener.setblocking(False)
        self._listener = listener
        self._loop = loop
        self._protocol = protocol
        self._tls = tls
        self._handshake_timeout_s = handshake_timeout_s
        self._refused = refused
        self._closed = False
        self._wake_read, self._wake_write = os.pipe()
        self._thread = threading.Thread(target=self._run, name="http-accept", daemon=True)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return () if self._closed else (self._listener,)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop accepting. Connections the kernel completed before (the listen backlog, which
        a client may already have sent a request on) are still accepted and served; the
        listener closes right after, so later ones are refused. Connections already handed
        over carry on."""
        if self._closed:
            return
        self._closed = True
        os.write(self._wake_write, b"\0")
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._listener.close()
        os.close(self._wake_read)
        os.close(self._wake_write)

    def _run(self) -> None:
        with select.epoll() as ready:
            ready.register(self._listener.fileno(), select.EPOLLIN | select.EPOLLEXCLUSIVE)
            ready.register(self._wake_read, select.EPOLLIN)
            while True:
                ready.poll()
                closing = self._closed  # read before taking the backlog: all of it is taken
                if not self._accept_waiting() or closing:
                    break
        self._listener.close()  # at once: a connection completed from now on is refused

    def _accept_waiting(self) -> bool:
        """Take every connection waiting in the backlog; False once the loop has closed."""
        while True:
            try:
                connection, _ = self._listener.accept()
            except BlockingIOError:
                return True
            except OSError as exc:
                if self._listener.fileno() < 0:
                    return False
                log.warning("accept failed: %s", exc)  # EMFILE and the like: back off
                threading.Event().wait(0.1)
                return True
            connection.setblocking(False)
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                self._loop.call_soon_threadsafe(self._hand_over, connection)
            except RuntimeError:  # the loop has closed
                connection.close()
                return False

    def _hand_over(self, connection: socket.socket) -> None:
        self._loop.create_task(self._connect(connection))

    async def _connect(self, connection: socket.socket) -> None:
        context: ssl.SSLContext | None = None
        if self._tls is not None:
            context = self._tls.current()  # read here: a rotated certificate serves at once
        try:
            await self._loop.connect_accepted_socket(
                self._protocol, connection, ssl=context,
                ssl_handshake_timeout=None if context is None else self._handshake_timeout_s)
        except OSError as exc:  # reset before it was handed over, or a failed TLS handshake
            log.debug("connection lost before it was served: %s", exc)
            connection.close()
            if context is not None and self._refused is not None:
                self._refused("tls_handshake")


def close_idle_connections(server: web.Server) -> int:
    """Close the connections that are waiting for a request of which no byte has arrived;
    returns how many. (A connection in the middle of a request closes after its reply.)"""
    closed = 0
    for handler in server.connections:
        if isinstance(handler, GuardedRequestHandler) and handler.idle:
            handler.force_close()
            closed += 1
    return closed


def _unread_bytes(transport: asyncio.BaseTransport | None) -> int:
    """Bytes the kernel received on the connection that the loop has not read yet."""
    sock = None if transport is None else transport.get_extra_info("socket")
    if sock is None:
        return 0
    count = array.array("i", [0])
    try:
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, count)
    except OSError:  # closed meanwhile
        return 0
    return count[0]


async def start_http(app: web.Application, config: ServerConfig,
                     refused: Refused) -> tuple[web.AppRunner, GuardedSite]:
    """Run `app` on `[server] host:http_port` with the connection limits."""
    # The gateway writes its own access lines (JSON, with trace ids), aiohttp none. A client
    # that hangs up ends its request (its queue place, its backend call: as Envoy resets the
    # upstream), counted as 499 (gateway.rest.errors), as the tests' server runs too.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=CLEANUP_TIMEOUT_S,
                           handler_cancellation=True)
    await runner.setup()
    site = GuardedSite(runner, config, refused)
    await site.start()
    return runner, site
