"""`gateway serve --workers 2` as a user runs it: real processes on free ports. Both workers
serve both doors on one port each; a model uploaded through one and a policy changed through
one (admin API, or files and SIGHUP) reach both; a killed worker comes back; a worker that dies
at start fails the start; and a port something else listens on fails `serve`, with one worker
or two. Which worker answered a request is read from its access line (`"worker": I`)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from protos.inference import grpc_service_pb2, grpc_service_pb2_grpc
from tests.conftest import put_model
from tests.onnx_models import demo_bytes
from tests.policy_support import write_policy

ROOT = Path(__file__).resolve().parent.parent
PREDICT = json.dumps({"instances": [[1, 2, 3, 4]]}).encode()
SERVING = r"(\d+) workers serving http://127\.0\.0\.1:(\d+) and grpc://127\.0\.0\.1:(\d+)"
SUPERVISOR, EDITOR = "gateway.supervisor", "gateway.policy.editor"


def demo_route(name: str) -> str:
    return f'[[routes]]\nname = "{name}"\nmodel = "demo"\ntarget = {{ adapter = "local" }}\n'


#: A text log line (`[server] log_format = "text"`): its worker, logger and message.
TEXT_LINE = re.compile(r"^\S+ \S+ \w+ (?:worker (?P<worker>\d+) pid \d+ )?(?P<logger>[\w.]+): "
                       r"(?P<message>.*)$")


def record(line: str) -> dict[str, Any]:
    """A log line as fields: JSON lines (access lines, application lines) as they are, text
    lines as worker, logger and message; anything else as its message."""
    if line.startswith("{"):
        fields: dict[str, Any] = json.loads(line)
        return fields
    match = TEXT_LINE.match(line.rstrip("\n"))
    if match is None:
        return {"message": line.rstrip("\n")}
    worker = match["worker"]
    return {"logger": match["logger"], "message": match["message"],
            **({"worker": int(worker)} if worker is not None else {})}


class Served:
    """`gateway serve ARGS` as a child process; a thread collects its stderr line by line."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", *args], cwd=ROOT, env=env,
            stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def records(self, after: int = 0) -> list[dict[str, Any]]:
        return [record(line) for line in self.lines[after:]]

    def wait_for(self, pattern: str, *, logger: str, worker: int | None = None,
                 within: float = 60.0, after: int = 0) -> re.Match[str]:
        """The first match of `pattern` in a message `logger` logged (in `worker`) after line
        `after`."""
        deadline = time.monotonic() + within
        while True:
            for fields in self.records(after):
                if fields.get("logger") == logger and fields.get("worker") == worker and (
                        match := re.search(pattern, fields["message"])):
                    return match
            ended = self.process.poll() is not None and not self._reader.is_alive()
            if ended or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        raise AssertionError(f"{logger} (worker {worker}) logged no {pattern!r} within "
                             f"{within} s:\n{self.log}")

    def access_lines(self) -> list[dict[str, Any]]:
        return [fields for fields in self.records() if "frontend" in fields]

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.finish(timeout)

    def finish(self, timeout: float = 60.0) -> int:
        """The exit status of a process that ends by itself."""
        try:
            return self.process.wait(timeout)
        finally:
            self.process.kill()
            self._reader.join(timeout=5)
            assert self.process.stderr is not None
            self.process.stderr.close()


class TwoWorkers:
    def __init__(self, served: Served, policies: Path) -> None:
        self.served = served
        self.policies = policies
        match = served.wait_for(SERVING, logger=SUPERVISOR)
        assert match[1] == "2"
        self.http_port, self.grpc_port = int(match[2]), int(match[3])
        self.base = f"http://127.0.0.1:{self.http_port}"

    def pids(self) -> dict[int, int]:
        """Worker index -> pid of the latest worker the supervisor reported serving."""
        return {int(m[1]): int(m[2]) for fields in self.served.records()
                if fields.get("logger") == SUPERVISOR
                and (m := re.fullmatch(r"worker (\d+) \(pid (\d+)\) serving", fields["message"]))}

    def until_every_worker(self, answered: Callable[[dict[str, Any]], bool],
                           send: Callable[[], object], within: float = 30.0) -> None:
        """Call `send` (a new connection each time) until both workers have written an access
        line that `answered` accepts."""
        deadline = time.monotonic() + within
        while True:
            send()
            workers = {line["worker"] for line in self.served.access_lines() if answered(line)}
            if workers == {0, 1}:
                return
            assert time.monotonic() < deadline, f"only workers {workers} answered"


def http(method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def write_config(directory: Path, *, policies: Path, extra: str = "") -> Path:
    repo = directory / "models"
    put_model(repo, "demo", 1, demo_bytes())
    write_policy(policies / "routes.toml", demo_route("demo"))
    config = directory / "gateway.toml"
    config.write_text(f"""\
[server]
http_port = 0
grpc_port = 0
{extra}

[adapters.local]
kind = "onnx"
repository = "{repo}"
poll_interval_s = 0.05

[models.demo]
adapter = "local"

[policies]
directory = "{policies}"
poll_interval_s = 3600  # only SIGHUP reads the files: the test of its forwarding
""")
    return config


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoWorkers]:
    directory = tmp_path_factory.mktemp("workers")
    policies = directory / "policies"
    # log_probes: a scrape's access line says which worker answered it (test_metrics_workers)
    served = Served("--config", str(write_config(directory, policies=policies,
                                                 extra="log_probes = true")),
                    "--workers", "2")
    try:
        running = TwoWorkers(served, policies)
        for worker in (0, 1):  # the doors open before the models have loaded
            served.wait_for(r"serving model demo version 1$", logger="adapters.onnx.adapter",
                            worker=worker)
        yield running
    finally:
        assert served.stop() == 0, served.log
        assert "shutting down" in served.log


def test_both_workers_serve_both_doors_on_one_port_each(gateway: TwoWorkers) -> None:
    for worker in (0, 1):
        for door, port in (("http", gateway.http_port), ("grpc", gateway.grpc_port)):
            gateway.served.wait_for(rf"^listening on {door}://127\.0\.0\.1:{port}$",
                                    logger="gateway", worker=worker, within=0)
    gateway.until_every_worker(
        lambda line: line.get("request") == "POST /v1/models/demo:predict"
        and line["status"] == "200",
        lambda: http("POST", gateway.base + "/v1/models/demo:predict", PREDICT))

    def ready_over_grpc() -> None:
        with grpc.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:  # a connection
            stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            ready = stub.ModelReady(grpc_service_pb2.ModelReadyRequest(name="demo"), timeout=10)
            assert ready.ready

    gateway.until_every_worker(lambda line: line["frontend"] == "v2-grpc"
                               and line["status"] == "OK", ready_over_grpc)


def test_a_model_uploaded_through_one_worker_serves_from_both(gateway: TwoWorkers) -> None:
    status, body = http("POST", gateway.base + "/models?name=fresh", demo_bytes())
    assert status == 201, body
    # The other worker finds it at its next repository poll (poll_interval_s) and loads it.
    gateway.until_every_worker(
        lambda line: line.get("model") == "fresh" and line["status"] == "200",
        lambda: http("POST", gateway.base + "/v1/models/fresh:predict", PREDICT))


def test_a_policy_put_through_one_worker_runs_in_both(gateway: TwoWorkers) -> None:
    before = len(gateway.served.lines)
    status, body = http("PUT", gateway.base + "/admin/policies", demo_route("by-admin").encode())
    assert status == 200, body
    version = json.loads(body)["active"]["version"]
    for worker in (0, 1):
        gateway.served.wait_for(rf"^policy version {version} \(admin, ", logger=EDITOR,
                                worker=worker, within=10, after=before)
    for _ in range(10):  # whichever worker answers
        _, body = http("GET", gateway.base + "/admin/policies")
        assert json.loads(body)["active"]["version"] == version


def test_sighup_reloads_the_policy_files_in_both(gateway: TwoWorkers) -> None:
    before = len(gateway.served.lines)
    write_policy(gateway.policies / "routes.toml", demo_route("by-file"))
    gateway.served.process.send_signal(signal.SIGHUP)  # the files' poll is an hour away
    versions = {gateway.served.wait_for(r"^policy version (\d+) \(files, ", logger=EDITOR,
                                        worker=worker, within=10, after=before)[1]
                for worker in (0, 1)}
    assert len(versions) == 1, "both run the same version number"


def test_a_killed_worker_is_restarted_and_adopts_the_running_policy(
        gateway: TwoWorkers) -> None:
    before = len(gateway.served.lines)
    old = gateway.pids()[1]
    version = json.loads(http("GET", gateway.base + "/admin/policies")[1])["active"]["version"]
    os.kill(old, signal.SIGKILL)
    gateway.served.wait_for(rf"^worker 1 \(pid {old}\) was killed by SIGKILL; restarting it "
                            r"in 0\.5 s$", logger=SUPERVISOR, within=10, after=before)
    new = int(gateway.served.wait_for(r"^worker 1 \(pid (\d+)\) serving$", logger=SUPERVISOR,
                                      after=before)[1])
    assert new != old
    # the killed worker logged nothing after `before`: this is the new one catching up
    gateway.served.wait_for(rf"^policy version {version} ", logger=EDITOR, worker=1,
                            after=before)


def crashing_worker_1(directory: Path, while_exists: Path | None = None) -> dict[str, str]:
    """An environment in which worker 1 exits with status 3 as its interpreter starts (only
    while the file `while_exists` exists, if given)."""
    condition = f"os.path.exists({str(while_exists)!r})" if while_exists else "True"
    (directory / "sitecustomize.py").write_text(
        "import os, sys\n"
        f"if sys.argv[-4:-2] == ['--worker', '1'] and {condition}:\n"
        "    os._exit(3)\n")
    return {**os.environ, "PYTHONPATH": str(directory)}


def test_a_worker_that_dies_at_start_fails_the_start(tmp_path: Path) -> None:
    config = write_config(tmp_path, policies=tmp_path / "policies")
    served = Served("--config", str(config), "--workers", "2",
                    env=crashing_worker_1(tmp_path))
    assert served.finish() == 1, served.log
    assert "could not serve: worker 1 exited with status 3 before it was ready" in served.log


def test_a_worker_that_keeps_dying_before_it_serves_stops_the_gateway(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    config = write_config(tmp_path, policies=tmp_path / "policies")
    served = Served("--config", str(config), "--workers", "2",
                    env=crashing_worker_1(tmp_path, while_exists=broken))
    running = TwoWorkers(served, tmp_path / "policies")
    broken.touch()  # from now on worker 1 cannot start
    os.kill(running.pids()[1], signal.SIGKILL)
    assert served.finish() == 1, served.log
    said = [fields["message"] for fields in served.records()
            if fields.get("logger") == SUPERVISOR]
    delays = [m[1] for line in said
              if (m := re.fullmatch(r"worker 1 \(pid \d+\) .*; restarting it in ([\d.]+) s", line))]
    assert delays == ["0.5", "1.0", "2.0", "4.0"], served.log  # killed, then 3 failed starts
    assert ("could not serve: worker 1 exited with status 3 before it was ready, 4 times in a "
            "row; stopping the workers") in said


@pytest.fixture
def listener() -> Iterator[int]:
    """A plain listening socket (no SO_REUSEPORT) on a free port: its port."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield sock.getsockname()[1]


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("door", ["http", "grpc"])
def test_a_port_another_program_listens_on_fails_serve(listener: int, door: str, workers: str,
                                                       tmp_path: Path) -> None:
    config = write_config(tmp_path, policies=tmp_path / "policies")
    served = Served("--config", str(config), f"--{door}-port", str(listener),
                    "--workers", workers)
    assert served.finish() == 1, served.log
    assert f"gateway: port {listener} ({door}) is already in use" in served.log


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("door", ["http", "grpc"])
def test_a_port_another_gateway_serves_fails_serve(gateway: TwoWorkers, door: str,
                                                   workers: str, tmp_path: Path) -> None:
    port = gateway.http_port if door == "http" else gateway.grpc_port
    config = write_config(tmp_path, policies=tmp_path / "policies")
    served = Served("--config", str(config), f"--{door}-port", str(port), "--workers", workers)
    assert served.finish() == 1, served.log
    assert f"gateway: port {port} ({door}) is already in use" in served.log


def test_workers_must_be_a_count_or_auto() -> None:
    served = Served("--workers", "0")
    assert served.finish() == 2
    assert "--workers: expected 1 to 1024 or 'auto', got '0'" in served.log
