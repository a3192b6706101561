"""TLS and mTLS from the gateway to its backends (`tls*` keys of a remote backend's table):
a TF Serving stand-in behind TLS over gRPC, and an HTTPS server in TorchServe's REST shape,
with certificates made at test time (trustme). A backend whose certificate the configured CA
did not sign, or one that wants a client certificate the gateway lacks, is never sent a
request; clients are told only that the backend is unavailable."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import TestClient

from adapters.pool_config import BackendTls, PoolConfig
from adapters.torchserve.config import TorchServeAdapterConfig
from adapters.torchserve.rest_inference import RestInference
from adapters.torchserve.transport import PredictCall
from gateway.config import load_config
from gateway.errors import Unavailable
from gateway.tomlconfig import ConfigError
from tests.conftest import WriteConfig
from tests.servers.tfserving_standin import (
    StandInTls,
    StartStandIn,
    TfServingStandIn,
    stable_answer,
    tfserving_config,
)
from tests.tls_support import Certificates

pytest_plugins = ["tests.servers.fixtures"]

ROWS = [[1.0, 2.0, 3.0, 4.0]]
MakeClient = Callable[..., Any]


@pytest.fixture
def certs(tmp_path: Path) -> Certificates:
    directory = tmp_path / "certs"
    directory.mkdir()
    return Certificates(directory)


def client_pair(certs: Certificates, name: str) -> tuple[Path, Path]:
    """A client certificate and its key, as two PEM files."""
    issued = certs.ca.issue_cert(f"{name}.clients.test", common_name=name)
    cert, key = certs.directory / f"{name}.crt", certs.directory / f"{name}.key"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    return cert, key


def other_ca(directory: Path) -> Path:
    path = directory / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return path


async def predict(client: TestClient) -> tuple[int, Any]:
    reply = await client.post("/v1/models/tfdemo/versions/1:predict", json={"instances": ROWS})
    return reply.status, await reply.json()


def tls_config(standin: TfServingStandIn, **keys: Any) -> str:
    return tfserving_config(standin.address, models=("tfdemo",), **keys)


async def test_tf_serving_over_tls_is_checked_against_the_configured_ca(
        make_client: MakeClient, start_standin: StartStandIn, certs: Certificates) -> None:
    standin = await start_standin(tls=StandInTls(certs.cert_file, certs.key_file))
    client = await make_client(tls_config(standin, tls=True, tls_ca_file=str(certs.ca_file)))
    status, body = await predict(client)
    assert status == 200
    np.testing.assert_allclose(body["predictions"], stable_answer(ROWS), rtol=1e-5)

    served = len(standin.calls("Predict"))
    client = await make_client(tls_config(standin, tls=True,
                                          tls_ca_file=str(other_ca(certs.directory))))
    status, body = await predict(client)
    assert status == 503 and body["error"].startswith("the model's backend is unavailable")
    assert "127.0.0.1" not in body["error"]  # the address and TLS text go to the log only
    assert len(standin.calls("Predict")) == served  # refused before any request went out


async def test_mtls_sends_the_client_certificate_and_without_one_the_backend_refuses(
        make_client: MakeClient, start_standin: StartStandIn, certs: Certificates) -> None:
    standin = await start_standin(tls=StandInTls(certs.cert_file, certs.key_file,
                                                 client_ca_file=certs.ca_file))
    cert, key = client_pair(certs, "gateway")
    client = await make_client(tls_config(standin, tls=True, tls_ca_file=str(certs.ca_file),
                                          tls_cert_file=str(cert), tls_key_file=str(key)))
    status, body = await predict(client)
    assert status == 200
    np.testing.assert_allclose(body["predictions"], stable_answer(ROWS), rtol=1e-5)

    served = len(standin.calls("Predict"))
    client = await make_client(tls_config(standin, tls=True, tls_ca_file=str(certs.ca_file)))
    status, body = await predict(client)
    assert status == 503 and body["error"].startswith("the model's backend is unavailable")
    assert len(standin.calls("Predict")) == served


async def test_tls_server_name_checks_a_name_other_than_the_address(
        make_client: MakeClient, start_standin: StartStandIn, certs: Certificates) -> None:
    issued = certs.ca.issue_cert("tfserving.internal")  # not valid for 127.0.0.1
    cert, key = certs.directory / "internal.crt", certs.directory / "internal.key"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    standin = await start_standin(tls=StandInTls(cert, key))
    client = await make_client(tls_config(standin, tls=True, tls_ca_file=str(certs.ca_file),
                                          tls_server_name="tfserving.internal"))
    assert (await predict(client))[0] == 200
    client = await make_client(tls_config(standin, tls=True, tls_ca_file=str(certs.ca_file)))
    assert (await predict(client))[0] == 503


@pytest.mark.parametrize(("keys", "key", "fragment"), [
    ({"tls_ca_file": "ca.pem"}, "tls_ca_file", "needs tls = true"),
    ({"tls": True, "tls_ca_file": "missing.pem"}, "tls_ca_file", "no such file"),
    ({"tls": True, "tls_cert_file": "SERVER_CERT"}, "tls_key_file", "both"),
    ({"tls": True, "tls_ca_file": "SERVER_KEY"}, "tls_ca_file", "not a PEM CA bundle"),
])
def test_tls_keys_are_checked_when_the_config_loads(
        write_config: WriteConfig, certs: Certificates, keys: dict[str, Any], key: str,
        fragment: str) -> None:
    paths = {"SERVER_CERT": str(certs.cert_file), "SERVER_KEY": str(certs.key_file),
             "ca.pem": str(certs.ca_file)}
    keys = {k: paths.get(v, v) if isinstance(v, str) else v for k, v in keys.items()}
    path = write_config(tfserving_config("127.0.0.1:1", models=("tfdemo",), **keys))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert f"adapters.tf.{key}" in str(caught.value) and fragment in str(caught.value)


# TorchServe's REST inference API over HTTPS (aiohttp's client with the pool's TLS settings)


@pytest.fixture
async def https_torchserve(certs: Certificates) -> AsyncIterator[str]:
    """`https://127.0.0.1:PORT` answering `/ping` and echoing `POST /predictions/{m}`, for
    clients with a certificate `certs.ca` signed only."""
    async def ping(request: web.Request) -> web.Response:
        return web.json_response({"status": "Healthy"})

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read(), content_type="text/plain")

    app = web.Application()
    app.add_routes([web.get("/ping", ping), web.post("/predictions/{model}", echo)])
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(certs.ca_file))
    context.load_cert_chain(str(certs.cert_file), str(certs.key_file))
    context.verify_mode = ssl.CERT_REQUIRED
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"https://127.0.0.1:{port}"
    await runner.cleanup()


def rest_config(url: str, tls: BackendTls) -> TorchServeAdapterConfig:
    return TorchServeAdapterConfig(name="ts", management_endpoints=(), protocol="rest",
                                   rest_endpoints=(url,), pool=PoolConfig(tls=tls))


async def test_torchserve_rest_over_https_with_a_client_certificate(
        https_torchserve: str, certs: Certificates) -> None:
    cert, key = client_pair(certs, "gateway")
    inference = RestInference(rest_config(https_torchserve,
                                          BackendTls(certs.ca_file, cert, key)))
    try:
        reply = await inference.predict(PredictCall("m", None, b"tensors", "text/plain", 5.0))
        assert reply.body == b"tensors"
    finally:
        await inference.close()

    inference = RestInference(rest_config(https_torchserve,
                                          BackendTls(other_ca(certs.directory), cert, key)))
    try:
        with pytest.raises(Unavailable) as caught:
            await inference.predict(PredictCall("m", None, b"tensors", "text/plain", 5.0))
        assert caught.value.message.startswith("the model's backend is unavailable")
    finally:
        await inference.close()
