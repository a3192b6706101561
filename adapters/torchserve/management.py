"""The two calls the gateway makes to TorchServe's gRPC management API: `DescribeModel` (status,
and the handler's own metadata) and `ListModels` (which models a backend holds)."""

from __future__ import annotations

from typing import Any

import grpc
import orjson

from adapters.endpoints import Balancer, GrpcEndpoint, Rpc, grpc_probe, rpc_probe
from adapters.pool.failures import from_grpc
from adapters.torchserve import errors
from adapters.torchserve.config import TorchServeAdapterConfig
from gateway.errors import BackendError
from gateway.metrics import GatewayMetrics
from protos.torchserve import management_pb2, management_pb2_grpc

#: Management calls are quick unless TorchServe is stuck; the caller's deadline may be shorter.
TIMEOUT_S = 5.0
_PAGE = 1000  # TorchServe's largest page; it answers an unset (0) limit with no models
#: The health probe: the cheapest management call
_LIST_ONE = rpc_probe(Rpc("org.pytorch.serve.grpc.management.ManagementAPIsService",
                          "ListModels", management_pb2_grpc.ManagementAPIsServiceStub),
                      management_pb2.ListModelsRequest(limit=1))


class TorchServeManagement:
    def __init__(self, config: TorchServeAdapterConfig,
                 metrics: GatewayMetrics | None = None) -> None:
        self._backend = config.name
        self._balancer = Balancer(
            config.name, [GrpcEndpoint(a, config.pool) for a in config.management_endpoints],
            config.pool, probe=grpc_probe(_LIST_ONE), metrics=metrics)

    async def describe(self, model: str, version: str, *,
                       customized: bool = False) -> list[dict[str, Any]]:
        """One entry per version (`version` "all"), else the one `version` names ("" for the
        default); `customized` also runs the handler's `describe_handle`."""
        request = management_pb2.DescribeModelRequest(model_name=model, model_version=version,
                                                      customized=customized)
        described = await self._call("DescribeModel", request)
        if not isinstance(described, list) or not all(isinstance(d, dict) for d in described):
            raise BackendError("TorchServe's DescribeModel answered "
                               f"{described!r:.80}")
        return described

    async def list_models(self) -> list[str]:
        names: list[str] = []
        token = 0
        while True:
            page = await self._call("ListModels", management_pb2.ListModelsRequest(
                limit=_PAGE, next_page_token=token))
            names += [m["modelName"] for m in page.get("models", ())]
            if not page.get("nextPageToken"):
                return names
            token = int(page["nextPageToken"])

    async def _call(self, method: str, request: Any) -> Any:
        async def attempt(endpoint: GrpcEndpoint) -> Any:
            try:
                stub = endpoint.stub(management_pb2_grpc.ManagementAPIsServiceStub)
                reply = await getattr(stub, method)(request, timeout=TIMEOUT_S)
            except grpc.aio.AioRpcError as exc:
                raise from_grpc(exc, errors.from_grpc,
                                f"TorchServe backend {self._backend}") from None
            try:
                return orjson.loads(reply.msg)
            except orjson.JSONDecodeError:
                raise BackendError(f"TorchServe's {method} answered "
                                   f"{reply.msg!r:.80}") from None

        return await self._balancer.call(attempt)

    async def close(self) -> None:
        await self._balancer.close()
        for endpoint in self._balancer.endpoints:
            await endpoint.channel.close()
