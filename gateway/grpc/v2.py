"""The Open Inference Protocol v2 gRPC API (`inference.GRPCInferenceService`), for Triton,
KServe and MLServer clients, with Triton's `ModelStreamInfer`: each message of the stream is a
`ModelInfer` of its own (admitted, limited, recorded and traced as one), answered as it
finishes; a message that fails is answered with its `error_message` and the stream goes on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, NoReturn

import grpc

import gateway
from gateway.codecs import v2_grpc
from gateway.errors import NotFound
from gateway.grpc.calls import GrpcCalls
from gateway.pipeline import Pipeline
from gateway.rest.v2 import EXTENSIONS, Readiness
from gateway.types import InferRequest, ModelRef, RequestContext
from protos.inference import grpc_service_pb2 as pb
from protos.inference import grpc_service_pb2_grpc

FRONTEND = "v2-grpc"


class InferenceService(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, pipeline: Pipeline, calls: GrpcCalls, readiness: Readiness) -> None:
        self._pipeline = pipeline
        self._calls = calls
        self._readiness = readiness

    async def ServerLive(self, request: pb.ServerLiveRequest,
                         context: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest,
                          context: grpc.aio.ServicerContext) -> pb.ServerReadyResponse:
        ready, _ = await self._readiness()
        return pb.ServerReadyResponse(ready=ready)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest,
                             context: grpc.aio.ServicerContext) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="inference-gateway", version=gateway.__version__,
                                         extensions=EXTENSIONS)

    async def ModelReady(self, request: pb.ModelReadyRequest,
                         context: grpc.aio.ServicerContext) -> pb.ModelReadyResponse:
        async def ready(call: RequestContext) -> pb.ModelReadyResponse:
            try:
                statuses = await self._pipeline.status(_ref(request.name, request.version), call)
            except NotFound:
                return pb.ModelReadyResponse(ready=False)
            return pb.ModelReadyResponse(ready=any(s.state == "AVAILABLE" for s in statuses))

        return await self._calls.run(context, FRONTEND, request.name, ready)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest,
                            context: grpc.aio.ServicerContext) -> pb.ModelMetadataResponse:
        async def metadata(call: RequestContext) -> pb.ModelMetadataResponse:
            found = await self._pipeline.metadata(_ref(request.name, request.version), call)
            return v2_grpc.metadata_response(found)

        return await self._calls.run(context, FRONTEND, request.name, metadata)

    async def ModelInfer(self, request: pb.ModelInferRequest,
                         context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        return await self._calls.run_infer(context, FRONTEND, request.model_name,
                                           lambda call: self._infer(request, call))

    async def ModelStreamInfer(self, requests: AsyncIterator[pb.ModelInferRequest],
                               context: grpc.aio.ServicerContext) -> None:
        """Messages run as they arrive, up to `STREAM_WINDOW` at once or unsent (so a stream
        batches as parallel calls do, and one whose client reads no replies holds no more),
        and are answered as each finishes, in any order, as Triton's are (a reply's `id` is
        its request's).

        A coroutine writing its replies, not an async generator yielding them: grpc.aio
        cancels this task when the client cancels, and the `finally` ends every message before
        the call is gone (a generator left suspended at its `yield` is closed only when it is
        collected, while its messages would still run on a call gRPC has freed)."""
        answers: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        window = asyncio.Semaphore(STREAM_WINDOW)
        running: set[asyncio.Task[None]] = set()
        message_context = _MessageContext(context)

        async def answer(request: pb.ModelInferRequest) -> None:
            answers.put_nowait(await self._stream_answer(request, message_context))

        async def read() -> None:
            try:
                async for request in requests:
                    await window.acquire()
                    task = asyncio.get_running_loop().create_task(answer(request))
                    running.add(task)
                    task.add_done_callback(running.discard)
                await asyncio.gather(*running)
            finally:
                answers.put_nowait(None)

        reader = asyncio.get_running_loop().create_task(read())
        try:
            while (reply := await answers.get()) is not None:
                await context.write(reply)
                window.release()  # once sent: a client that reads no replies gets no more run
            await reader  # the stream's own failure (the client's cancel), if any
        finally:
            for task in (reader, *running):
                task.cancel()
            await asyncio.gather(reader, *running, return_exceptions=True)

    async def _stream_answer(self, request: pb.ModelInferRequest,
                             context: _MessageContext) -> pb.ModelStreamInferResponse:
        try:
            reply = await self._calls.run_infer(context, FRONTEND, request.model_name,
                                                lambda call: self._infer(request, call))
        except _MessageFailed as failed:
            return pb.ModelStreamInferResponse(
                error_message=failed.message, infer_response=pb.ModelInferResponse(
                    model_name=request.model_name, model_version=request.model_version,
                    id=request.id))
        return pb.ModelStreamInferResponse(infer_response=reply)

    async def _infer(self, request: pb.ModelInferRequest,
                     call: RequestContext) -> pb.ModelInferResponse:
        response = await self._pipeline.infer(InferRequest(
            ref=_ref(request.model_name, request.model_version), context=call,
            inputs=await v2_grpc.decode_inputs_async(request, budget=self._calls.budget),
            outputs=tuple(o.name for o in request.outputs) or None,
            parameters=v2_grpc.parameters(request.parameters), id=request.id or None))
        return v2_grpc.encode_response(response)


#: Messages of one `ModelStreamInfer` stream running or answered but not yet sent; the next
#: message is read once one's answer is sent.
STREAM_WINDOW = 64


class _MessageFailed(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _MessageContext:
    """What a stream's message runs in, for `GrpcCalls`: the stream's metadata, deadline, peer
    and credentials, read once when the stream starts (so no message touches the call
    itself), and a failure (an abort) that ends the message, not the stream; a message's
    trailing metadata is not the stream's."""

    def __init__(self, stream: grpc.aio.ServicerContext) -> None:
        self._metadata = stream.invocation_metadata()
        remaining = stream.time_remaining()
        self._deadline = None if remaining is None else time.monotonic() + remaining
        self._peer = stream.peer()
        self._auth = stream.auth_context()

    def invocation_metadata(self) -> Any:
        return self._metadata

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def peer(self) -> str:
        return str(self._peer)

    def auth_context(self) -> Any:
        return self._auth

    def set_trailing_metadata(self, metadata: Sequence[tuple[str, str]]) -> None:
        pass

    async def abort(self, code: grpc.StatusCode, details: str,
                    trailing_metadata: Sequence[tuple[str, str]] = ()) -> NoReturn:
        raise _MessageFailed(details)


def _ref(name: str, version: str) -> ModelRef:
    return ModelRef(name, version or None)
