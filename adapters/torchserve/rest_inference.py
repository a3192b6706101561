"""TorchServe's REST inference API (`/predictions/{m}[/{v}]`, `/explanations/...`) over
aiohttp: the client's method, headers (`headers`), body and content type go as they are; the
reply comes back with the status, headers and content type the handler chose (none when it
chose none), and a chunked reply (a streaming handler) is relayed chunk by chunk, so no model
needs to be declared as streaming."""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncGenerator
from urllib.parse import quote

import aiohttp

from adapters.pool.balancer import Balancer
from adapters.pool.endpoint import Endpoint
from adapters.pool.failures import Unreachable
from adapters.pool.health import ProbeFailed
from adapters.pool_config import client_ssl_context
from adapters.torchserve import errors, headers
from adapters.torchserve.config import TorchServeAdapterConfig
from adapters.torchserve.transport import PredictCall, Reply
from gateway.errors import BackendError, DeadlineExceeded, GatewayError
from gateway.metrics import GatewayMetrics
from gateway.telemetry import propagation

log = logging.getLogger(__name__)
#: Headers aiohttp would add that the client did not send: the handler sees the client's.
_AS_THE_CLIENT_SENT = ("User-Agent", "Accept-Encoding", "Content-Type")
_LARGE_BYTES = 1 << 20  # aiohttp warns about writing more at once


class RestInference:
    def __init__(self, config: TorchServeAdapterConfig,
                 metrics: GatewayMetrics | None = None) -> None:
        self._backend = config.name
        self._connect_timeout_s = config.pool.connect_timeout_s
        tls = config.pool.tls  # for https:// endpoints; without it, the system's CAs
        self._server_name = tls.server_name if tls is not None else None
        # made here, inside the running loop: the adapter builds this in `start`
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=0, ssl=client_ssl_context(tls) if tls is not None else True),
            auto_decompress=False)
        self._balancer = Balancer(config.name, [Endpoint(a) for a in config.rest_endpoints],
                                  config.pool, probe=self._ping, metrics=metrics)

    async def predict(self, call: PredictCall) -> Reply:
        path = ("/explanations/" if call.explain else "/predictions/") + quote(call.model,
                                                                              safe="")
        if call.version:
            path += "/" + quote(call.version, safe="")
        return await self._balancer.call(lambda e: self._send(e, path, call))

    async def _send(self, endpoint: Endpoint, path: str, call: PredictCall) -> Reply:
        """The call with the client's headers (a POST: TorchServe treats every method alike);
        TorchServe's reply with its status and headers, its error body as ours."""
        where = f"TorchServe backend {self._backend} ({endpoint.address})"  # for the log
        timeout = aiohttp.ClientTimeout(total=max(call.seconds, 0.001),
                                        sock_connect=self._connect_timeout_s)
        sent = headers.to_handler(call.headers)
        if call.content_type:
            sent["Content-Type"] = call.content_type
        url = endpoint.address + path
        try:
            with propagation.http_call("POST", url) as out:
                sent.update(out.headers)
                response = await self._session.post(
                    url, data=_payload(call.body), timeout=timeout, headers=sent,
                    skip_auto_headers=_AS_THE_CLIENT_SENT, server_hostname=self._server_name)
                out.span.set_attribute("http.response.status_code", response.status)
        except aiohttp.ClientConnectorError as exc:
            raise Unreachable(str(exc), retry_after_s=1) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _failed(exc, where) from None
        content_type = response.headers.get("Content-Type")
        relayed = headers.to_client(response.headers)
        if response.headers.get("Transfer-Encoding", "").lower() != "chunked":
            async with response:
                body = await _read(response, where)
            if response.status >= 400 and (error := errors.from_rest(response.status, body)):
                raise error
            return Reply(body, content_type, status=response.status, headers=relayed)
        chunks = _chunks(endpoint, response, where)
        return Reply(await anext(chunks, b""), content_type, chunks, response.status, relayed)

    async def _ping(self, endpoint: Endpoint, seconds: float) -> None:
        """The health probe: TorchServe's `GET /ping` answers 200 while it is healthy."""
        async with self._session.get(endpoint.address + "/ping", server_hostname=self._server_name,
                                     timeout=aiohttp.ClientTimeout(total=seconds)) as response:
            if response.status != 200:
                raise ProbeFailed(f"GET /ping answered {response.status}")

    async def close(self) -> None:
        await self._balancer.close()
        await self._session.close()


def _payload(body: bytes) -> bytes | io.BytesIO:
    """A large body as a stream aiohttp writes in parts, not in one blocking write."""
    return io.BytesIO(body) if len(body) > _LARGE_BYTES else body


def _failed(exc: Exception, where: str) -> GatewayError:
    """A call that broke off, told to the client without TorchServe's address (the log has
    it, with aiohttp's words, which may name it)."""
    if isinstance(exc, TimeoutError):
        return DeadlineExceeded("TorchServe did not answer within the deadline")
    log.warning("%s: %s: %s", where, type(exc).__name__, exc)
    return BackendError(f"TorchServe's reply broke off ({type(exc).__name__})")


async def _read(response: aiohttp.ClientResponse, where: str) -> bytes:
    try:
        return await response.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise _failed(exc, where) from None


async def _chunks(endpoint: Endpoint, response: aiohttp.ClientResponse,
                  where: str) -> AsyncGenerator[bytes, None]:
    """The reply's HTTP chunks as TorchServe sent them (one per handler response)."""
    endpoint.outstanding += 1
    try:
        part = b""
        async for data, end_of_chunk in response.content.iter_chunks():
            part += data
            if end_of_chunk and part:
                yield part
                part = b""
        if part:
            yield part
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise _failed(exc, where) from None
    finally:
        endpoint.outstanding -= 1
        response.release()
