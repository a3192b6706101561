"""TLS on the listeners (`[server.tls]`, gateway/tls): the table checked at load, HTTPS and gRPC
over TLS and mTLS against real clients (curl, grpc secure channels, the official TF Serving and
Triton clients), clients without a valid certificate refused on both doors, the verified client
subject reaching the request, a rotated certificate served without a restart (also by every
worker of `--workers 2`), and the plaintext warning for a non-loopback host."""

from __future__ import annotations

import http.client
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import trustme

from gateway.auth import ANONYMOUS, AnonymousAuthenticator
from gateway.cli import main
from gateway.config import ConfigError, load_config
from gateway.tls.config import TlsConfig, plaintext_warning
from gateway.tls.material import CertificateFiles
from gateway.types import RequestContext
from protos.inference import grpc_service_pb2, grpc_service_pb2_grpc
from tests.servers.gateway_process import ROOT, GatewayProcess, gateway_process
from tests.test_real_clients import ROWS, run_client
from tests.tls_support import Certificates, ClientCertificate, client_context, served_serial

MODELS = ROOT / "models"
INFER = json.dumps({"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32",
                                "data": [v for row in ROWS for v in row]}]})


def write_gateway_toml(directory: Path, server: str = "", tls: str = "") -> Path:
    path = directory / "gateway.toml"
    path.write_text(f"[server]\nhttp_port = 0\ngrpc_port = 0\n{server}\n{tls}\n"
                    f'[adapters.local]\nkind = "onnx"\nrepository = "{MODELS}"\n\n'
                    '[models.demo]\nadapter = "local"\n')
    return path


def curl(port: int, certs: Certificates, path: str = "/v2/health/ready", *,
         client: ClientCertificate | None = None, data: str | None = None,
         scheme: str = "https") -> subprocess.CompletedProcess[str]:
    command = ["curl", "-sS", "--max-time", "10", "--cacert", str(certs.ca_file),
               "-w", "\n%{http_code}", f"{scheme}://127.0.0.1:{port}{path}"]
    if client is not None:
        command += ["--cert", str(client.pem)]
    if data is not None:
        command += ["-H", "Content-Type: application/json", "--data", data]
    return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)


def secure_channel(port: int, certs: Certificates,
                   client: ClientCertificate | None = None) -> grpc.Channel:
    key = None if client is None else client.pem.read_bytes()
    credentials = grpc.ssl_channel_credentials(certs.ca_file.read_bytes(), private_key=key,
                                               certificate_chain=key)
    return grpc.secure_channel(f"127.0.0.1:{port}", credentials)


def grpc_infer(channel: grpc.Channel) -> list[float]:
    stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
    request = grpc_service_pb2.ModelInferRequest(model_name="demo")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[2, 4])
    tensor.contents.fp32_contents.extend(v for row in ROWS for v in row)
    reply = stub.ModelInfer(request, timeout=10)
    return list(np.frombuffer(reply.raw_output_contents[0], dtype=np.float32))


def wait_ready(gateway: GatewayProcess, certs: Certificates,
               client: ClientCertificate | None = None, times: int = 1) -> None:
    """`GatewayProcess.wait_ready`, over HTTPS: `times` new connections in a row are ready
    (with workers, whichever takes them)."""
    gateway.wait_until("ready", lambda: all(
        curl(gateway.http_port, certs, client=client).stdout.endswith("\n200")
        for _ in range(times)))


def access_lines(gateway: GatewayProcess) -> list[dict[str, Any]]:
    lines = (json.loads(line) for line in gateway.log_text().splitlines()
             if line.startswith("{"))
    return [line for line in lines if "request" in line and "status" in line]


# [server.tls] as config


def test_tls_table_loads_with_paths_relative_to_the_config(tmp_path: Path) -> None:
    certs = Certificates(tmp_path)
    config = load_config(write_gateway_toml(tmp_path, tls=certs.server_table(mutual=True)))
    assert config.server.tls == TlsConfig(certs.cert_file, certs.key_file, certs.ca_file)
    assert config.server.tls.mutual
    plain = load_config(write_gateway_toml(tmp_path))
    assert plain.server.tls is None


@pytest.mark.parametrize(("key", "spoil", "message"), [
    ("cert_file", lambda c: c.cert_file.unlink(), "cannot read"),
    ("cert_file", lambda c: c.cert_file.write_text("not a certificate"), "no PEM certificate"),
    ("key_file", lambda c: c.key_file.write_bytes(
        trustme.CA().issue_cert("127.0.0.1").private_key_pem.bytes()), "not the key of"),
    ("key_file", lambda c: c.key_file.write_text("garbage"), "not an unencrypted PEM"),
    ("client_ca_file", lambda c: c.ca_file.write_text("garbage"), "no PEM certificate"),
])
def test_a_bad_certificate_file_is_refused_at_load_naming_its_key(
        tmp_path: Path, key: str, spoil: Any, message: str) -> None:
    certs = Certificates(tmp_path)
    path = write_gateway_toml(tmp_path, tls=certs.server_table(mutual=True))
    spoil(certs)
    with pytest.raises(ConfigError, match=rf"gateway.toml:\d+: server.tls.{key}: .*{message}"):
        load_config(path)


def test_an_unknown_tls_key_is_refused(tmp_path: Path) -> None:
    certs = Certificates(tmp_path)
    path = write_gateway_toml(tmp_path, tls=certs.server_table(mutual=False) + "min_tls = 1\n")
    with pytest.raises(ConfigError, match=r"server.tls.min_tls: unknown key"):
        load_config(path)


def test_plaintext_on_a_non_loopback_host_is_warned_about(tmp_path: Path) -> None:
    tls = TlsConfig(tmp_path / "c", tmp_path / "k")
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert plaintext_warning(host, None) is None
    for host in ("0.0.0.0", "::", "10.1.2.3", "gateway.internal"):
        assert "plaintext" in (plaintext_warning(host, None) or "")
        assert plaintext_warning(host, tls) is None


def test_check_config_warns_of_plaintext_on_the_network(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    exposed = write_gateway_toml(tmp_path, server='host = "0.0.0.0"')
    assert main(["check-config", str(exposed)]) == 0  # a warning, not a refusal
    assert "[server.tls] is not set" in capsys.readouterr().err
    certs = Certificates(tmp_path)
    covered = write_gateway_toml(tmp_path, server='host = "0.0.0.0"',
                                 tls=certs.server_table(mutual=False))
    assert main(["check-config", str(covered)]) == 0
    assert "plaintext" not in capsys.readouterr().err


def test_a_rotation_caught_halfway_keeps_the_certificate_in_use(tmp_path: Path) -> None:
    certs = Certificates(tmp_path)
    files = CertificateFiles(TlsConfig(certs.cert_file, certs.key_file), "http",
                             interval_s=0)
    first = files.material.serial
    assert first == certs.serial
    issued = certs.ca.issue_cert("127.0.0.1")
    certs.key_file.write_bytes(issued.private_key_pem.bytes())  # the key lands first
    assert files.changed() is None
    assert files.material.serial == first
    certs.cert_file.write_bytes(issued.cert_chain_pems[0].bytes())
    material = files.changed()
    assert material is not None and material.serial != first
    assert files.changed() is None  # nothing new since


async def test_without_auth_a_client_certificate_subject_is_the_principal() -> None:
    authenticator = AnonymousAuthenticator()
    context = RequestContext(frontend="v2", headers={}, deadline=0.0)
    assert await authenticator.authenticate(context) is ANONYMOUS
    context.tls_subject = "CN=app-1,O=Acme"
    principal = await authenticator.authenticate(context)
    assert principal.subject == "CN=app-1,O=Acme"
    assert principal.claims == {"sub": "CN=app-1,O=Acme"}


# A gateway under mTLS (auth off)


@pytest.fixture(scope="module")
def mtls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess,
                                                                      Certificates]]:
    directory = tmp_path_factory.mktemp("mtls")
    certs = Certificates(directory)
    config = write_gateway_toml(directory, tls=certs.server_table(mutual=True))
    with gateway_process(config, directory / "gateway.log") as gateway:
        wait_ready(gateway, certs, certs.client("probe"))
        yield gateway, certs


def test_curl_calls_https_with_a_client_certificate(
        mtls: tuple[GatewayProcess, Certificates]) -> None:
    gateway, certs = mtls
    reply = curl(gateway.http_port, certs, "/v2/models/demo/infer", data=INFER,
                 client=certs.client("curl-app"))
    body, status = reply.stdout.rsplit("\n", 1)
    assert (reply.returncode, status) == (0, "200"), reply.stderr
    probabilities = np.float32(json.loads(body)["outputs"][0]["data"]).reshape(2, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)
    plaintext = curl(gateway.http_port, certs, scheme="http")
    assert plaintext.stdout.rsplit("\n", 1)[-1] != "200"  # no plaintext on the TLS port


def test_a_client_without_a_valid_certificate_is_refused_on_both_doors(
        mtls: tuple[GatewayProcess, Certificates], tmp_path: Path) -> None:
    gateway, certs = mtls
    stranger = Certificates(tmp_path).client("stranger")  # signed by another CA
    for client in (None, stranger):
        refused = curl(gateway.http_port, certs, client=client)
        assert refused.returncode != 0, refused.stdout
        with secure_channel(gateway.grpc_port, certs, client) as channel, \
                pytest.raises(grpc.RpcError) as caught:
            grpc_infer(channel)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    with secure_channel(gateway.grpc_port, certs, certs.client("grpc-app")) as channel:
        assert len(grpc_infer(channel)) == 6  # the same door admits a signed client
    metrics = curl(gateway.http_port, certs, "/metrics", client=certs.client("scraper"))
    refusals = [line for line in metrics.stdout.splitlines() if line.startswith(
        'gateway_connections_refused_total{reason="tls_handshake"}')]
    assert refusals and float(refusals[0].split()[-1]) >= 2, metrics.stdout[-2000:]


def test_the_client_subject_reaches_the_request_on_both_doors(
        mtls: tuple[GatewayProcess, Certificates]) -> None:
    gateway, certs = mtls
    rest, grpc_app = certs.client("rest-subject"), certs.client("grpc-subject")
    assert curl(gateway.http_port, certs, "/v2/models/demo/infer", data=INFER,
                client=rest).returncode == 0
    with secure_channel(gateway.grpc_port, certs, grpc_app) as channel:
        grpc_infer(channel)

    def principals() -> dict[str, str]:
        return {line["principal"]: line["frontend"] for line in access_lines(gateway)
                if line["principal"] in (rest.subject, grpc_app.subject)}

    gateway.wait_until("logged", lambda: len(principals()) == 2, within=10)
    assert principals() == {rest.subject: "v2", grpc_app.subject: "v2-grpc"}
    assert rest.subject.startswith("CN=rest-subject,")


async def test_official_tfserving_and_triton_clients_over_mtls(
        mtls: tuple[GatewayProcess, Certificates]) -> None:
    gateway, certs = mtls
    client = certs.client("official-clients")
    report = await run_client("tls_client.py", f"127.0.0.1:{gateway.grpc_port}",
                              str(certs.ca_file), str(client.pem))
    assert report["triton_ready"] is True
    tfserving = np.float32(report["tfserving"]).reshape(2, 3)
    np.testing.assert_allclose(tfserving.sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_array_equal(tfserving, np.float32(report["triton"]).reshape(2, 3))


# Rotation, with workers


def test_workers_serve_tls_and_a_rotated_certificate_without_a_restart(tmp_path: Path) -> None:
    certs = Certificates(tmp_path)
    config = write_gateway_toml(tmp_path, server="workers = 2",
                                tls=certs.server_table(mutual=False))
    first = certs.serial
    https, h2 = client_context(certs.ca_file, "http/1.1"), client_context(certs.ca_file, "h2")
    with gateway_process(config, tmp_path / "gateway.log") as gateway:
        gateway.wait_until("both workers serving",
                           lambda: "2 workers serving https://" in gateway.log_text())
        wait_ready(gateway, certs, times=10)
        assert served_serial(gateway.http_port, https) == first
        assert served_serial(gateway.grpc_port, h2) == first
        kept = http.client.HTTPSConnection("127.0.0.1", gateway.http_port, context=https,
                                           timeout=10)
        kept.request("GET", "/v2/health/ready")
        assert kept.getresponse().read() == b'{"ready":true}'

        second = certs.rotate()
        # Each worker has its own watch: every new handshake, whichever worker takes it,
        # must get the new certificate (20 in a row: both workers, all but surely).
        gateway.wait_until("serving the new certificate", lambda: all(
            served_serial(gateway.http_port, https) == second
            and served_serial(gateway.grpc_port, h2) == second for _ in range(20)), within=20)
        kept.request("GET", "/v2/health/ready")  # opened before: it carries on
        assert kept.getresponse().read() == b'{"ready":true}'
        kept.close()
        for _ in range(10):
            reply = curl(gateway.http_port, certs, "/v2/models/demo/infer", data=INFER)
            assert reply.stdout.endswith("\n200"), reply.stderr
        with secure_channel(gateway.grpc_port, certs) as channel:
            assert len(grpc_infer(channel)) == 6
        workers = {line.get("worker") for line in access_lines(gateway)}
        assert workers == {0, 1}, "both workers answered over TLS"
        assert gateway.process.poll() is None
        for door in ("http", "grpc"):
            assert f"tls ({door}): certificate files changed; new connections get serial " \
                f"{second:x}" in gateway.log_text()
