"""The admin API for policies: GET (active version, sources, history), PUT (the whole policy;
refused when it would silently drop a section), PATCH (only the sections sent), dry runs that
show the diff, POST rollback; refusals name file, line and key and leave the running policy;
every change is logged with its author and diff; every call needs the admin scope."""

from __future__ import annotations

import logging
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
              headers: dict[str, str] | None = None,
              method: str = "PUT") -> tuple[int, dict[str, Any]]:
    reply = await client.request(method, f"/admin/policies{query}", data=text, headers=headers)
    return reply.status, await reply.json()


async def patch(client: TestClient, text: str, query: str = "",
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    return await put(client, text, query, headers, method="PATCH")


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
    document = split_policy() + '[[limits]]\nname = "l"\nmodels = ["*"]\n'
    status, body = await put(client, document, "?dry_run=true")
    assert (status, body["valid"], body["routes"], body["limits"]) == (200, True, ["ab-test"],
                                                                        ["l"])
    assert body["changes"] == {
        "routes": {"added": ["ab-test"], "removed": [], "changed": [], "reordered": False},
        "limits": {"added": ["l"], "removed": [], "changed": [], "reordered": False}}
    assert body["diff"].startswith("--- /dev/null\n+++ b/admin.toml\n@@ -0,0 +1,21 @@\n")
    assert body["sources"] == {"admin.toml": document}
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
        "version": 3, "origin": "rollback", "author": "anonymous", "parent": 0, "applied_at": 0,
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
             ("PATCH", "/admin/policies", pinned_policy(1)),
             ("PATCH", "/admin/policies?dry_run=true", pinned_policy(1)),
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


LIMITS = """
# per-user: 10/s keeps one client from starving the rest
[[limits]]
name = "per-user"
models = ["*"]
burst = 20
"""


async def test_a_put_that_would_drop_a_section_is_refused_naming_it(client: TestClient) -> None:
    assert (await put(client, pinned_policy(1) + LIMITS))[0] == 200
    status, body = await put(client, pinned_policy(2))  # routes only: would drop the limits
    assert status == 409
    assert body["error"] == (
        "the policy sent sets no limits; PUT would remove the active ones (limits: per-user). "
        "Send them too, PATCH /admin/policies to replace only the sections sent, or PUT "
        "?replace=all to remove them")
    assert (await put(client, pinned_policy(2), "?dry_run=true"))[0] == 409  # as it would be
    status, body = await put(client, LIMITS)
    assert status == 409 and "sets no routes; PUT would remove the active ones (routes: " \
        "pinned)" in body["error"]
    assert (await show(client))["active"]["version"] == 1
    assert (await predict(client)).variant == "v1"
    status, body = await put(client, pinned_policy(2), "?replace=all")
    assert status == 200 and body["active"]["version"] == 2
    assert client.gateway.policies.store.active.policy.limits == ()  # type: ignore[attr-defined]
    status, body = await put(client, pinned_policy(1) + LIMITS, "?replace=some")
    assert status == 400 and "replace must be 'all'" in body["error"]
    # Saying so is explicit too: `limits = []` sets the section, empty.
    assert (await put(client, pinned_policy(1) + LIMITS))[0] == 200
    status, body = await put(client, "limits = []\n" + pinned_policy(2))
    assert status == 200 and body["active"]["version"] == 4


async def test_patch_replaces_only_the_sections_it_sets(client: TestClient) -> None:
    assert (await put(client, pinned_policy(1) + LIMITS))[0] == 200
    status, body = await patch(client, pinned_policy(2))
    assert status == 200 and body["active"]["version"] == 2
    assert (await predict(client)).variant == "v2"
    document = (await show(client))["active"]["sources"]["admin.toml"]
    assert document == (pinned_policy(2) + "\n# limits kept from admin.toml\n"
                        + LIMITS.lstrip("\n"))  # the limits as written, comment included
    status, body = await patch(client, "limits = []\n")  # every limit goes, the routes stay
    assert status == 200
    sources = (await show(client))["active"]["sources"]["admin.toml"]
    assert "per-user" not in sources and 'name = "pinned"' in sources
    assert (await predict(client)).variant == "v2"
    status, body = await patch(client, '[[rotes]]\nname = "x"\n')
    assert status == 400
    assert body["error"].startswith("invalid policy: admin.toml:1: rotes: unknown key (known "
                                    "keys here: limits, routes)")
    status, body = await patch(client, "\n" + pinned_policy(3).replace("version = 3",
                                                                       "version = 0"))
    assert status == 400 and "admin.toml:6: routes[0].target.version" in body["error"]
    assert (await show(client))["active"]["version"] == 3


async def test_patch_refuses_to_cut_a_section_it_cannot_keep_as_written(
        client: TestClient) -> None:
    inline = 'limits = [{ name = "l", models = ["*"] }]\n' + pinned_policy(1)
    assert (await put(client, inline))[0] == 200
    status, body = await patch(client, pinned_policy(2))
    assert status == 409
    assert body["error"] == ("cannot patch the active policy: admin.toml: its limits are not "
                             "all written as [[limits]] tables; PUT the whole policy instead")
    assert (await show(client))["active"]["version"] == 1


async def test_a_patch_dry_run_shows_the_diff_and_applies_nothing(client: TestClient) -> None:
    assert (await put(client, split_policy() + LIMITS))[0] == 200
    status, body = await patch(client, split_policy(weight_b=10) + pinned_policy(2)
                               .replace("pinned", "second"), "?dry_run=true")
    assert status == 200
    assert body["changes"] == {
        "routes": {"added": ["second"], "removed": [], "changed": ["ab-test"],
                   "reordered": False},
        "limits": {"added": [], "removed": [], "changed": [], "reordered": False}}
    assert "-weight = 50\n+weight = 10\n" in body["diff"]
    assert '+name = "second"\n' in body["diff"]
    assert not [line for line in body["diff"].splitlines()
                if line.startswith(("+", "-")) and "per-user" in line]  # the limits stay
    assert body["limits"] == ["per-user"]
    assert (await show(client))["active"]["version"] == 1


async def test_every_change_is_logged_with_its_author_and_diff(
        make_client: MakeClient, repo: Path, caplog: pytest.LogCaptureFixture) -> None:
    add_ab_model(repo)
    client: TestClient = await make_client(AB_MODEL + f"\n[auth]\nenabled = true\n"
                                           f"{hs_provider()}")
    alice = bearer(sign(claims(time.time(), scope="admin")))
    bob = bearer(sign(claims(time.time(), scope="admin", sub="bob")))
    caplog.set_level(logging.INFO, logger="gateway.policy.editor")
    assert (await put(client, pinned_policy(1), headers=alice))[0] == 200
    assert (await patch(client, pinned_policy(2), headers=bob))[0] == 200
    assert (await client.post("/admin/policies/rollback", headers=alice)).status == 200
    messages = [r.getMessage() for r in caplog.records if "applied" in r.getMessage()]
    assert len(messages) == 3
    first, patched, rolled_back = messages
    assert first.startswith("policy version 1 (admin, by alice, ")
    assert "applied: 1 routes, 0 limits; routes: +pinned (from version 0)\n" in first
    assert patched.startswith("policy version 2 (admin, by bob, ")
    assert "; routes: ~pinned (from version 1)\n--- a/admin.toml\n+++ b/admin.toml\n" in patched
    assert '-target = { adapter = "local", version = 1, variant = "v1" }\n' in patched
    assert '+target = { adapter = "local", version = 2, variant = "v2" }' in patched
    assert rolled_back.startswith("policy version 3 (rollback, by alice, ")
    reply = await client.get("/admin/policies", headers=alice)
    history = (await reply.json())["history"]
    assert [(v["version"], v["author"]) for v in history] == [
        (3, "alice"), (2, "bob"), (1, "alice"), (0, None)]
