"""TorchServe's REST inference API (`POST /predictions/{m}[/{v}]`) over aiohttp: the body and
its content type go as they are, and a chunked reply (a streaming handler) is relayed chunk by
chunk, so no model needs to be declared as streaming."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from urllib.parse import quote

import aiohttp

from adapters.endpoints import Balancer, Endpoint
from adapters.torchserve import errors
from adapters.torchserve.config import TorchServeAdapterConfig
from adapters.torchserve.transport import PredictCall, Reply
from gateway.errors import BackendError, DeadlineExceeded, Unavailable
from gateway.telemetry import propagation


class RestInference:
    def __init__(self, config: TorchServeAdapterConfig) -> None:
        self._backend = config.name
        self._connect_timeout_s = config.pool.connect_timeout_s
        self._balancer = Balancer([Endpoint(a) for a in config.rest_endpoints])
        # made here, inside the running loop: the adapter builds this in `start`
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)

    async def predict(self, call: PredictCall) -> Reply:
        path = "/predictions/" + quote(call.model, safe="")
        if call.version:
            path += "/" + quote(call.version, safe="")
        return await self._balancer.call(lambda e: self._post(e, path, call))

    async def _post(self, endpoint: Endpoint, path: str, call: PredictCall) -> Reply:
        where = f"TorchServe backend {self._backend} ({endpoint.address})"
        timeout = aiohttp.ClientTimeout(total=max(call.seconds, 0.001),
                                        sock_connect=self._connect_timeout_s)
        headers = {"Content-Type": call.content_type} if call.content_type else {}
        url = endpoint.address + path
        try:
            with propagation.http_call("POST", url) as out:
                response = await self._session.post(url, data=call.body, timeout=timeout,
                                                     headers={**headers, **out.headers})
                out.span.set_attribute("http.response.status_code", response.status)
        except aiohttp.ClientConnectorError as exc:
            raise Unavailable(f"{where} is unreachable: {exc}", retry_after_s=1) from None
        except aiohttp.ClientError as exc:
            raise BackendError(f"{where}: {exc}") from None
        except TimeoutError:
            raise DeadlineExceeded(f"{where}: no answer within the deadline") from None
        if response.status >= 400:
            async with response:
                raise errors.from_rest(response.status, await _read(response, where), where)
        content_type = response.headers.get("Content-Type", "")
        if response.headers.get("Transfer-Encoding", "").lower() != "chunked":
            async with response:
                return Reply(await _read(response, where), content_type)
        chunks = _chunks(endpoint, response, where)
        return Reply(await anext(chunks, b""), content_type, chunks)

    async def close(self) -> None:
        await self._session.close()


async def _read(response: aiohttp.ClientResponse, where: str) -> bytes:
    try:
        return await response.read()
    except aiohttp.ClientError as exc:
        raise BackendError(f"{where}: {exc}") from None
    except TimeoutError:
        raise DeadlineExceeded(f"{where}: no answer within the deadline") from None


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
    except aiohttp.ClientError as exc:
        raise BackendError(f"{where}: {exc}") from None
    except TimeoutError:
        raise DeadlineExceeded(f"{where}: no answer within the deadline") from None
    finally:
        endpoint.outstanding -= 1
        response.release()
