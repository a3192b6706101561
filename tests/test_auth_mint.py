"""`gateway token`: a development token the gateway's own verifier accepts."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.auth.factory import build_authenticator, build_authorizer
from gateway.authz import Verb
from gateway.cli import main
from tests.auth_support import SECRET, auth_config, bearer, context, provider

CONFIG = "[auth]\nenabled = true\n" + provider(
    'algorithms = ["HS256", "HS384"]', 'secret_env = "GATEWAY_DEV_SECRET"')


@pytest.fixture(autouse=True)
def secret(monkeypatch: pytest.MonkeyPatch) -> None:
    # 56 bytes: long enough for HS384 (48), too short for HS512 (64).
    monkeypatch.setenv("GATEWAY_DEV_SECRET", SECRET + "-and-more-hs384")


@pytest.mark.parametrize("alg", ["HS256", "HS384"])
async def test_a_minted_token_round_trips_through_the_verifier(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], alg: str) -> None:
    assert main(["token", "--secret-env", "GATEWAY_DEV_SECRET", "--sub", "alice",
                 "--scope", "predict admin", "--ttl", "600", "--alg", alg]) == 0
    token = capsys.readouterr().out.strip()
    config = auth_config(tmp_path, CONFIG)
    principal = await build_authenticator(config).authenticate(context(bearer(token)))
    assert principal.subject == "alice"
    assert principal.claims["exp"] - principal.claims["iat"] == 600
    build_authorizer(config).authorize(principal, Verb.MANAGE, None)


@pytest.mark.parametrize(("args", "message"), [
    (["--secret-env", "GATEWAY_UNSET_SECRET"], "GATEWAY_UNSET_SECRET is not set"),
    (["--secret-env", "GATEWAY_DEV_SECRET", "--alg", "HS512"], "minimum recommended length"),
    (["--secret-env", "GATEWAY_DEV_SECRET", "--ttl", "0"], "ttl must be a positive"),
])
def test_refusals_exit_2_with_a_reason(capsys: pytest.CaptureFixture[str], args: list[str],
                                       message: str) -> None:
    assert main(["token", "--sub", "alice", *args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and message in err
