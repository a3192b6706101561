"""The admin API for policies: GET (active version, sources, history), PUT (apply, or only
validate with ?dry_run=true), POST rollback; refusals name file, line and key and leave the
running policy; every call needs the admin scope."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import Gateway
from gateway.config import load_config
from gateway.tomlconfig import ConfigError
from tests.auth_support import bearer, claims, hs_provider, sign
from tests.conftest import WriteConfig
from tests.policy_support import AB_MODEL, add_ab_model, pinned_policy, predict, split_policy

MakeClient = Callable[..., Any]


@pytest.fixture
async def client(make_client: MakeClient, repo: Path) -> TestClient:
    add_ab_model(repo)
    return await make_client(AB_MODEL)  # type: ignore[no-any-return]


async def put(client: TestClient, text: str | bytes, query: str = "",
              headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    reply = await client.put(f"/admin/policies{query}", data=text, headers=headers)
    return reply.status, await reply.json()


async def show(client: TestClient) -> dict[str, Any]:
    reply = await client.get("/admin/policies")
    assert reply.status == 200
    return await reply.json()  # type: ignore[no-any-return]


def refused(client: TestClient) -> float:
    registry = client.gateway.metrics.registry  # type: ignore[attr-defined]
    return registry.get_sample_value("gateway_policy_changes_total",  # type: ignore[no-any-return]
                                     {"origin": "admin", "result": "refused"}) or 0.0


async def test_put_applies_a_new_version_and_get_shows_it(client: TestClient) -> None:
    assert (await predict(client)).variant is None  # no policy yet: the route table
    status, body = await put(client, pinned_policy(2))
    assert status == 200, body
    assert (body["active"]["version"], body["active"]["origin"]) == (1, "admin")
    served = await predict(client)
    assert (served.variant, served.version) == ("v2", "2")
    shown = await show(client)
    assert shown["active"]["version"] == 1 and shown["active"]["parent"] == 0
    assert shown["active"]["sources"] == {"admin.toml": pinned_policy(2)}
    assert shown["active"]["hash"] == body["active"]["hash"]
    assert [(v["version"], v["origin"]) for v in shown["history"]] == [(1, "admin"),
                                                                        (0, "none")]
    status, again = await put(client, pinned_policy(2))
    assert (status, again["active"]["version"]) == (200, 1)  # same content: same version


async def test_an_invalid_policy_is_refused_with_file_line_and_key(client: TestClient) -> None:
    await put(client, pinned_policy(1))
    status, body = await put(client, pinned_policy(1).replace('"local"', '"lcoal"'))
    assert status == 400
    assert body["error"].startswith("invalid policy: admin.toml:5: routes[0].target.adapter: "
                                    "no adapter named 'lcoal'")
    assert refused(client) == 1
    assert (await show(client))["active"]["version"] == 1
    assert (await predict(client)).variant == "v1"
    status, body = await put(client, b"\xff\xfe")
    assert status == 400 and "UTF-8" in body["error"]


async def test_dry_run_validates_without_applying(client: TestClient) -> None:
    status, body = await put(client, split_policy() + '[[limits]]\nname = "l"\nmodels = ["*"]\n',
                             "?dry_run=true")
    assert (status, body) == (200, {"valid": True, "routes": ["ab-test"], "limits": ["l"]})
    assert (await show(client))["active"]["version"] == 0
    status, body = await put(client, split_policy(weight_b=0), "?dry_run=true")
    assert status == 400
    assert "admin.toml:16: routes[0].variants[1].weight: expected a value > 0" in body["error"]
    status, body = await put(client, split_policy(), "?dry_run=yes")
    assert status == 400 and "dry_run must be true or false" in body["error"]
    assert (await show(client))["active"]["version"] == 0


async def test_rollback_restores_the_previous_version(client: TestClient) -> None:
    for version in (1, 2):
        await put(client, pinned_policy(version))
    reply = await client.post("/admin/policies/rollback")
    assert reply.status == 200
    assert (await reply.json())["active"] | {"applied_at": 0} == {
        "version": 3, "origin": "rollback", "parent": 0, "applied_at": 0,
        "hash": (await show(client))["history"][2]["hash"], "files": ["admin.toml"]}
    assert (await predict(client)).variant == "v1"
    reply = await client.post("/admin/policies/rollback")
    assert reply.status == 200 and (await predict(client)).variant is None
    reply = await client.post("/admin/policies/rollback")
    assert reply.status == 409
    assert "no earlier version" in (await reply.json())["error"]


async def test_the_admin_api_needs_the_admin_scope(make_client: MakeClient, repo: Path) -> None:
    add_ab_model(repo)
    client: TestClient = await make_client(AB_MODEL + f"\n[auth]\nenabled = true\n"
                                           f"{hs_provider()}")

    def token(scope: str) -> dict[str, str]:
        return bearer(sign(claims(time.time(), scope=scope)))

    calls = [("GET", "/admin/policies", None), ("PUT", "/admin/policies", pinned_policy(1)),
             ("PUT", "/admin/policies?dry_run=true", pinned_policy(1)),
             ("POST", "/admin/policies/rollback", None)]
    for method, path, body in calls:
        assert (await client.request(method, path, data=body)).status == 401
        reply = await client.request(method, path, data=body, headers=token("predict"))
        assert reply.status == 403, (method, path)
    status, body = await put(client, pinned_policy(1), headers=token("admin"))
    assert (status, body["active"]["version"]) == (200, 1)
    reply = await client.get("/admin/policies", headers=token("predict admin"))
    assert reply.status == 200


def test_a_gateway_does_not_start_on_invalid_policy_files(write_config: WriteConfig,
                                                         tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "shop.toml").write_text(
        '[[routes]]\nname = "r"\nmodel = "demo"\ntarget = { adapter = "local", weight = 2 }\n')
    config = load_config(write_config(f'[policies]\ndirectory = "{tmp_path / "policies"}"\n'))
    with pytest.raises(ConfigError, match=rf"^{tmp_path}/policies/shop.toml:4: "
                                          r"routes\[0\].target.weight: unknown key"):
        Gateway(config)
    (tmp_path / "policies" / "shop.toml").unlink()
    (tmp_path / "policies").rmdir()
    with pytest.raises(ConfigError, match="the policy directory does not exist"):
        Gateway(config)
