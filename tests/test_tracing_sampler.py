"""What gets exported, decided when the request ends (`gateway.telemetry.recorder`): errors
and slow requests are kept whatever the ratio, other requests by the head sampler's ratio
over their trace ids (chosen here, so no outcome depends on chance or timing), and
`[tracing] detail` chooses between request-level and per-step spans. Against the real OTLP
receiver, with the gateways configured as ops would."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from aiohttp.test_utils import TestClient
from opentelemetry import context, trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
from opentelemetry.trace import SpanKind
from opentelemetry.trace.status import Status, StatusCode

from gateway.telemetry import propagation, spans
from gateway.telemetry.config import TracingConfig
from gateway.telemetry.recorder import HeadSampler
from gateway.telemetry.setup import build_tracing
from tests.servers.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.servers.running_gateway import RunningGateway, StartGateway
from tests.servers.tfserving_standin import TfServingStandIn
from tests.waiting import wait_until

pytest_plugins = ["tests.servers.fixtures"]

V2_BODY = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
TF_BODY = {"instances": [[1.0] * 4]}
CALLER_SPAN = "00f067aa0ba902b7"
TF_PREDICT = "tensorflow.serving.PredictionService/Predict"
#: Trace ids whose low 64 bits fall below, and above, a ratio of 0.5's bound (2^63).
BELOW_HALF = [f"{n:016x}{n:016x}" for n in (1, 2**40, 2**62, 2**63 - 1)]
ABOVE_HALF = [f"{n:016x}{n:016x}" for n in (2**63, 2**63 + 7, 2**64 - 1)]


def traceparent(trace_id: str, flags: str = "01") -> str:
    return f"00-{trace_id}-{CALLER_SPAN}-{flags}"


def tracing(sampler: str, ratio: float = 1.0, **keys: object) -> str:
    lines = ["[tracing]", 'exporter = "otlp"', f'sampler = "{sampler}"', f"sampler_arg = {ratio}"]
    lines += [f"{key} = {toml_value(value)}" for key, value in keys.items()]
    return "\n".join(lines) + "\n"


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f'"{value}"' if isinstance(value, str) else str(value)


def traces(receiver: OtlpReceiver) -> set[str]:
    return {span.trace_id for span in receiver.spans(lambda _: True)}


async def exported_of(receiver: OtlpReceiver, client: TestClient, marker: str,
                      path: str = "/v2/models/demo/infer", body: object = None) -> set[str]:
    """The trace ids exported so far, once a request that is certainly kept (a sampled trace,
    `marker`) arrived: the processor exports in the order spans end, so any span of the
    requests before it would have arrived too."""
    reply = await client.post(path, json=body or V2_BODY, headers={"traceparent": traceparent(
        marker)})
    assert reply.status == 200
    await wait_until(lambda: marker in traces(receiver))
    return traces(receiver) - {marker}


@pytest.fixture
def otel(monkeypatch: pytest.MonkeyPatch, otlp_receiver: OtlpReceiver) -> OtlpReceiver:
    """The OTLP receiver, configured through the environment; the sampler comes from the
    file (`tracing()`)."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_receiver.endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "10")
    return otlp_receiver


def test_the_head_sampler_decides_by_the_trace_ids_low_bits_as_the_sdks() -> None:
    half = HeadSampler("traceidratio", 0.5)
    assert [half.sampled(int(t, 16), None) for t in BELOW_HALF] == [True] * len(BELOW_HALF)
    assert [half.sampled(int(t, 16), None) for t in ABOVE_HALF] == [False] * len(ABOVE_HALF)
    sdk = TraceIdRatioBased(0.1)
    for trace_id in (int(t, 16) for t in BELOW_HALF + ABOVE_HALF + ["%032x" % (2**64 // 11)]):
        assert HeadSampler("traceidratio", 0.1).sampled(trace_id, None) == (
            sdk.should_sample(None, trace_id, "x").decision.is_sampled())
    assert not HeadSampler("always_off", 1.0).sampled(1, None)
    assert HeadSampler("always_on", 0.0).sampled(2**64 - 1, None)


def test_a_requests_spans_wait_for_its_end_and_go_or_stay_together(
        monkeypatch: pytest.MonkeyPatch) -> None:
    exporter = InMemorySpanExporter()
    monkeypatch.setattr("gateway.telemetry.setup.BatchSpanProcessor",
                        lambda _: SimpleSpanProcessor(exporter))
    monkeypatch.setattr("gateway.telemetry.setup._otlp_exporter", lambda _: None)
    tracing = build_tracing(TracingConfig(("otlp",), sampler="always_off", detail="steps"))
    assert tracing is not None
    tracer = tracing.tracer

    def request(trace_id: str, failed: bool) -> str:
        """A server span with a step and a backend call; the traceparent the backend got."""
        root = tracer.start_span("server", context=propagation.extract(
            {"traceparent": traceparent(trace_id, "00")}), kind=SpanKind.SERVER)
        token = spans.bind(tracer)
        with spans.Scope(root, current=True):
            with spans.step("route"):
                pass
            with propagation.grpc_call("svc", "Call", "127.0.0.1:1") as out:
                sent = dict(out.headers)["traceparent"]
            assert exporter.get_finished_spans() == ()  # nothing before the request ends
            if failed:
                root.set_status(Status(StatusCode.ERROR))
        spans.unbind(token)
        assert trace.get_current_span(context.get_current()) is trace.INVALID_SPAN
        return sent

    sent = request("a" * 32, failed=False)
    assert exporter.get_finished_spans() == () and sent.endswith("-00")
    sent = request("b" * 32, failed=True)
    kept = {s.name: s for s in exporter.get_finished_spans()}
    assert set(kept) == {"server", "route", "svc/Call"}
    assert all(s.context.trace_id == int("b" * 32, 16) and s.context.trace_flags.sampled
               for s in kept.values())
    server_id = kept["server"].context.span_id
    assert [kept[name].parent.span_id for name in ("route", "svc/Call")  # type: ignore[union-attr]
            ] == [server_id, server_id]
    assert kept["server"].parent is not None and kept["server"].parent.is_remote
    # The backend was told "not sampled" and the client span's id: the head decision.
    assert sent == f"00-{'b' * 32}-{kept['svc/Call'].context.span_id:016x}-00"


async def test_fast_ok_requests_are_sampled_at_the_ratio_by_trace_id(
        otel: OtlpReceiver, make_client: Callable[..., Any]) -> None:
    client: TestClient = await make_client(tracing("traceidratio", 0.5, slow_ms=60_000))
    for trace_id in BELOW_HALF + ABOVE_HALF:  # the caller's flag does not count: no parentbased
        reply = await client.post("/v2/models/demo/infer", json=V2_BODY,
                                  headers={"traceparent": traceparent(trace_id, "00")})
        assert reply.status == 200
    assert await exported_of(otel, client, "1" * 32) == set(BELOW_HALF)


async def test_errors_are_kept_at_ratio_zero_and_client_errors_are_not(
        otel: OtlpReceiver, start_gateway: StartGateway, standin: TfServingStandIn) -> None:
    gw: RunningGateway = await start_gateway(tracing("parentbased_traceidratio", 0.0))
    failed, refused, fine = "e" * 32, "c" * 32, "f" * 32
    standin.fail_next("Predict", grpc.StatusCode.INTERNAL, "the model crashed")
    reply = await gw.http.post("/v1/models/tfdemo:predict", json=TF_BODY,
                               headers={"traceparent": traceparent(failed, "00")})
    failed_status = reply.status
    assert failed_status >= 500
    standin.fail_next("Predict", grpc.StatusCode.INVALID_ARGUMENT, "bad input")
    reply = await gw.http.post("/v1/models/tfdemo:predict", json=TF_BODY,
                               headers={"traceparent": traceparent(refused, "00")})
    assert reply.status == 400
    reply = await gw.http.post("/v1/models/tfdemo:predict", json=TF_BODY,
                               headers={"traceparent": traceparent(fine, "00")})
    assert reply.status == 200
    # the caller's sampled flag makes the marker sampled (parentbased), whatever the ratio
    assert await exported_of(otel, gw.http, "a" * 32, "/v1/models/tfdemo:predict",
                             TF_BODY) == {failed}
    kept = {s.kind: s for s in otel.spans(lambda s: s.trace_id == failed)}
    server, client = kept["server"], kept["client"]
    assert server.error and server.attributes["http.response.status_code"] == failed_status
    assert server.name == "POST /v1/models/{model}:predict"  # named and attributed when kept
    assert server.attributes["http.route"] == "/v1/models/{model}:predict"
    assert (client.name, client.parent_id, client.error) == (TF_PREDICT, server.span_id, True)
    # The backend was called before the request failed: it was told "not sampled".
    assert standin.calls("Predict")[0].metadata["traceparent"].endswith("-00")


async def test_slow_requests_are_kept_at_ratio_zero(
        otel: OtlpReceiver, start_gateway: StartGateway, standin: TfServingStandIn) -> None:
    gw: RunningGateway = await start_gateway(tracing("always_off", keep_errors=False,
                                                     slow_ms=300))
    slow, fast = "5" * 32, "f" * 32
    standin.pause("Predict")
    started = time.monotonic()
    pending = gw.http.post("/v1/models/tfdemo:predict", json=TF_BODY,
                           headers={"traceparent": traceparent(slow)})
    task = asyncio.ensure_future(pending)
    await wait_until(lambda: standin.waiting == 1 and time.monotonic() - started > 0.4)
    standin.resume()
    assert (await task).status == 200
    await wait_until(lambda: slow in traces(otel))
    server = otel.spans(lambda s: s.trace_id == slow and s.kind == "server")[0]
    assert server.attributes["http.route"] == "/v1/models/{model}:predict"
    # A fast one is not kept (always_off, and 300 ms is far above its time): a slow one after
    # it arrives, and the fast one never does.
    reply = await gw.http.post("/v1/models/tfdemo:predict", json=TF_BODY,
                               headers={"traceparent": traceparent(fast)})
    assert reply.status == 200
    marker = "6" * 32
    standin.pause("Predict")
    started = time.monotonic()
    task = asyncio.ensure_future(gw.http.post(
        "/v1/models/tfdemo:predict", json=TF_BODY, headers={"traceparent": traceparent(marker)}))
    await wait_until(lambda: standin.waiting == 1 and time.monotonic() - started > 0.4)
    standin.resume()
    assert (await task).status == 200
    await wait_until(lambda: marker in traces(otel))
    assert fast not in traces(otel)


def names(spans: list[ReceivedSpan]) -> set[str]:
    return {span.name for span in spans}


@pytest.mark.parametrize(("detail", "demo", "tfdemo"), [
    ("request", {"POST /v2/models/{model}/infer"}, {"POST /v1/models/{model}:predict",
                                                     TF_PREDICT}),
    ("steps", {"POST /v2/models/{model}/infer", "route", "onnx", "batch demo/1"},
     {"POST /v1/models/{model}:predict", "route", TF_PREDICT}),
])
async def test_the_detail_chooses_request_or_step_spans(
        otel: OtlpReceiver, start_gateway: StartGateway, detail: str, demo: set[str],
        tfdemo: set[str]) -> None:
    gw: RunningGateway = await start_gateway(tracing("always_on", detail=detail))
    demo_trace, tf_trace = "d" * 32, "7" * 32
    warm = await gw.http.post("/v1/models/tfdemo:predict", json=TF_BODY)  # fetches the metadata
    assert warm.status == 200
    reply = await gw.http.post("/v2/models/demo/infer", json=V2_BODY,
                               headers={"traceparent": traceparent(demo_trace)})
    assert reply.status == 200
    reply = await gw.http.post("/v1/models/tfdemo:predict", json=TF_BODY,
                               headers={"traceparent": traceparent(tf_trace)})
    assert reply.status == 200
    await gw.http.close()  # flushes every span
    demo_spans = otel.spans(lambda s: s.trace_id == demo_trace)
    batches = otel.spans(lambda s: s.name.startswith("batch ") and any(
        link.trace_id == demo_trace for link in s.links))
    assert names(demo_spans + batches) == demo
    assert names(otel.spans(lambda s: s.trace_id == tf_trace)) == tfdemo
